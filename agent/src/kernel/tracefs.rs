//! Tracepoint record layouts from tracefs format files.
//!
//! Rust eBPF gets no CO-RE relocations, so the agent reads each tracepoint's
//! `format` file at start-up and passes the field offsets to the kernel
//! programs as a global ([`TracepointLayout`]).

use std::path::PathBuf;

use selfops_ebpf::{FIELD_ABSENT, TracepointLayout};

use super::{mounts::TRACEFS, socket_hooks::SocketHook};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    MissingField { tracepoint: String, field: String },
    #[error(
        "tracepoint {tracepoint}: field `{field}` at offset {found}, the sensor reads {expected}"
    )]
    Layout {
        tracepoint: String,
        field: String,
        expected: u32,
        found: u32,
    },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The parsed `format` file of one tracepoint.
#[derive(Debug, Clone)]
pub struct TracepointFormat {
    pub tracepoint: String,
    pub fields: Vec<Field>,
}

impl TracepointFormat {
    pub fn read(category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = PathBuf::from(format!("{TRACEFS}/events/{category}/{name}/format"));
        let text =
            std::fs::read_to_string(&path).map_err(|source| TracefsError::Read { path, source })?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    /// Parses lines like
    /// `field:__data_loc char[] filename; offset:8; size:4; signed:0;`
    /// (tab-separated).
    pub fn parse(tracepoint: &str, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let decl = line.strip_prefix("field:")?.split(';').next()?;
                let name = decl.split_whitespace().last()?;
                let name = name.split('[').next()?.to_owned();
                let number = |key: &str| {
                    line.split(';')
                        .find_map(|part| part.trim().strip_prefix(key))
                        .and_then(|v| v.parse::<u32>().ok())
                };
                Some(Field {
                    name,
                    offset: number("offset:")?,
                    size: number("size:")?,
                })
            })
            .collect();
        Self {
            tracepoint: tracepoint.to_owned(),
            fields,
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn offset(&self, name: &str) -> Result<u32, TracefsError> {
        self.field(name)
            .map(|f| f.offset)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.tracepoint.clone(),
                field: name.to_owned(),
            })
    }
}

/// Offsets the process sensors need on this kernel.
pub fn tracepoint_layout() -> Result<TracepointLayout, TracefsError> {
    let exec = TracepointFormat::read("sched", "sched_process_exec")?;
    let newtask = TracepointFormat::read("task", "task_newtask")?;
    let exit = TracepointFormat::read("sched", "sched_process_exit")?;
    Ok(TracepointLayout {
        exec_filename: exec.offset("filename")?,
        newtask_pid: newtask.offset("pid")?,
        newtask_clone_flags: newtask.offset("clone_flags")?,
        exit_group_dead: exit.field("group_dead").map_or(FIELD_ABSENT, |f| f.offset),
    })
}

/// Whether tracefs has the tracepoint `category:name`.
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    std::path::Path::new(&format!("{TRACEFS}/events/{category}/{name}/format")).exists()
}

fn expect_offset(
    format: &TracepointFormat,
    field: &str,
    expected: u32,
) -> Result<(), TracefsError> {
    let found = format.offset(field)?;
    if found == expected {
        Ok(())
    } else {
        Err(TracefsError::Layout {
            tracepoint: format.tracepoint.clone(),
            field: field.to_owned(),
            expected,
            found,
        })
    }
}

/// The socket sensor reads the arguments at 16 + 8·i and the return value
/// at 16 of syscall records (raw_syscalls: the syscall number at 8 and an
/// `args` array; per-syscall: `__syscall_nr` at 8 and one 8-byte field per
/// argument); checks that this kernel agrees before anything is attached.
pub fn check_syscall_layout(hook: SocketHook) -> Result<(), TracefsError> {
    let (category, tracepoints) = hook.tracepoints();
    match hook {
        SocketHook::RawSyscalls => {
            let enter = TracepointFormat::read(category, "sys_enter")?;
            expect_offset(&enter, "id", 8)?;
            expect_offset(&enter, "args", 16)?;
            let exit = TracepointFormat::read(category, "sys_exit")?;
            expect_offset(&exit, "id", 8)?;
            expect_offset(&exit, "ret", 16)?;
        }
        SocketHook::PerSyscall | SocketHook::RawExit => {
            for (_, tracepoint) in tracepoints {
                check_per_syscall(&TracepointFormat::read(category, tracepoint)?)?;
            }
        }
        SocketHook::Fentry | SocketHook::Kprobe => {}
    }
    Ok(())
}

/// One `syscalls:sys_enter_*` or `sys_exit_*` record.
fn check_per_syscall(format: &TracepointFormat) -> Result<(), TracefsError> {
    expect_offset(format, "__syscall_nr", 8)?;
    if format.field("ret").is_some() {
        return expect_offset(format, "ret", 16);
    }
    let nr = format.offset("__syscall_nr")?;
    let args = format
        .fields
        .iter()
        .filter(|f| !f.name.starts_with("common_") && f.offset > nr);
    for (i, field) in (0u32..).zip(args) {
        let expected = 16 + 8 * i;
        if field.offset != expected || field.size != 8 {
            return Err(TracefsError::Layout {
                tracepoint: format.tracepoint.clone(),
                field: field.name.clone(),
                expected,
                found: field.offset,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_6_18: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"comm=%s pid=%d\", REC->comm, REC->pid
";

    #[test]
    fn parses_fields() {
        let format = TracepointFormat::parse("sched:sched_process_exit", EXIT_6_18);
        assert_eq!(format.fields.len(), 5);
        assert_eq!(
            format.field("comm"),
            Some(&Field {
                name: "comm".into(),
                offset: 8,
                size: 16
            })
        );
        assert_eq!(format.offset("group_dead").unwrap(), 32);
        assert!(format.offset("prio").is_err());
    }

    #[test]
    fn parses_data_loc() {
        let text = "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n";
        let format = TracepointFormat::parse("x", text);
        assert_eq!(format.offset("filename").unwrap(), 8);
    }

    const ENTER_READ_6_18: &str = "name: sys_enter_read
ID: 800
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn per_syscall_layout_checked() {
        let enter = TracepointFormat::parse("syscalls:sys_enter_read", ENTER_READ_6_18);
        assert!(check_per_syscall(&enter).is_ok());
        let moved = ENTER_READ_6_18.replace("offset:24", "offset:28");
        let enter = TracepointFormat::parse("syscalls:sys_enter_read", &moved);
        assert!(matches!(
            check_per_syscall(&enter),
            Err(TracefsError::Layout {
                expected: 24,
                found: 28,
                ..
            })
        ));
        let exit = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        assert!(
            check_per_syscall(&TracepointFormat::parse("syscalls:sys_exit_read", exit)).is_ok()
        );
        let exit = exit.replace("offset:16", "offset:12");
        assert!(
            check_per_syscall(&TracepointFormat::parse("syscalls:sys_exit_read", &exit)).is_err()
        );
    }

    #[test]
    fn ignores_garbage() {
        let format = TracepointFormat::parse("x", "field:\nfield:int a;offset:x;size:4;\n\0\n");
        assert!(format.fields.is_empty());
    }
}
