//! Compact unwind tables built from an ELF file's `.eh_frame` or
//! `.debug_frame` with gimli: per address range, how to find the canonical
//! frame address (CFA), the caller's frame pointer and the return address.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, read::ReadCache};

/// Rows kept per file at most: bounds a table built from hostile input.
pub const MAX_ROWS: usize = 4 << 20;
/// Largest CFI section read (the biggest binaries have tens of MiB).
const MAX_SECTION_BYTES: u64 = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading the ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("no .eh_frame or .debug_frame")]
    NoCfi,
    #[error("CFI section of {0} bytes is too large")]
    TooLarge(u64),
}

/// How the CFA is found at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cfa {
    /// `rsp + offset`
    Sp = 0,
    /// `rbp + offset`
    Bp = 1,
    /// The outermost frame (return address undefined): the stack ends here.
    End = 2,
    /// No CFI covers the address, or a rule this unwinder does not model
    /// (expressions): fall back to frame pointers.
    Unknown = 3,
}

/// One row: the rule holds from `start` to the next row's start. Eight
/// bytes, so libc's table is ~100 KiB and python3's under 1 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// ELF virtual address (files whose code lies above 4 GiB get no rows).
    pub start: u32,
    pub cfa_offset: i16,
    /// Caller's rbp saved at `CFA + bp_offset`; 0 means rbp is unchanged.
    pub bp_offset: i8,
    pub cfa: Cfa,
}

const _: () = assert!(std::mem::size_of::<Row>() == 8);

impl Row {
    fn same_rule(&self, other: &Row) -> bool {
        self.cfa == other.cfa
            && self.cfa_offset == other.cfa_offset
            && self.bp_offset == other.bp_offset
    }
}

/// A loadable segment: translates file offsets to virtual addresses.
#[derive(Debug, Clone, Copy)]
struct Segment {
    file_offset: u64,
    file_size: u64,
    vaddr: u64,
}

/// The unwind rows of one file, sorted by address.
#[derive(Debug)]
pub struct UnwindTable {
    rows: Box<[Row]>,
    segments: Box<[Segment]>,
}

impl UnwindTable {
    /// Parses `file`. Corrupt CFI entries are skipped: the table holds what
    /// parsed, and addresses without rows fall back to frame pointers.
    pub fn build(file: &std::fs::File) -> Result<Self, TableError> {
        // Reads only the headers and the CFI sections, not the whole file.
        Self::parse(&ReadCache::new(file))
    }

    /// The same from an ELF image in memory (tests, fuzzing).
    pub fn from_bytes(data: &[u8]) -> Result<Self, TableError> {
        Self::parse(data)
    }

    fn parse<'d, R: object::ReadRef<'d>>(data: R) -> Result<Self, TableError> {
        let elf = object::File::parse(data)?;
        let segments: Box<[Segment]> = elf
            .segments()
            .map(|s| {
                let (file_offset, file_size) = s.file_range();
                Segment {
                    file_offset,
                    file_size,
                    vaddr: s.address(),
                }
            })
            .collect();
        let mut rows = Vec::new();
        let mut found = false;
        if let Some(section) = elf.section_by_name(".eh_frame") {
            let data = section_data(&section)?;
            let mut bases = BaseAddresses::default().set_eh_frame(section.address());
            if let Some(text) = elf.section_by_name(".text") {
                bases = bases.set_text(text.address());
            }
            if let Some(got) = elf.section_by_name(".got") {
                bases = bases.set_got(got.address());
            }
            let mut eh = EhFrame::new(&data, LittleEndian);
            eh.set_address_size(8);
            collect_rows(&eh, &bases, &mut rows);
            found = true;
        }
        // .debug_frame only when there is no .eh_frame: where both exist
        // they describe the same code.
        if !found && let Some(section) = elf.section_by_name(".debug_frame") {
            let data = section_data(&section)?;
            let mut debug = DebugFrame::new(&data, LittleEndian);
            debug.set_address_size(8);
            collect_rows(&debug, &BaseAddresses::default(), &mut rows);
            found = true;
        }
        if !found {
            return Err(TableError::NoCfi);
        }
        Ok(Self::from_rows(rows, segments))
    }

    fn from_rows(mut rows: Vec<Row>, segments: Box<[Segment]>) -> Self {
        // At one address the end marker of the FDE before sorts first, and
        // the FDE's own row replaces it below.
        rows.sort_unstable_by_key(|r| (r.start, r.cfa != Cfa::Unknown));
        let mut compact: Vec<Row> = Vec::with_capacity(rows.len());
        for row in rows {
            match compact.last_mut() {
                Some(last) if last.start == row.start => {
                    if last.cfa == Cfa::Unknown {
                        *last = row;
                    }
                }
                Some(last) if last.same_rule(&row) => {}
                _ => compact.push(row),
            }
        }
        Self {
            rows: compact.into_boxed_slice(),
            segments,
        }
    }

    /// Bytes this table holds.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.rows.len() * std::mem::size_of::<Row>()
            + self.segments.len() * std::mem::size_of::<Segment>()
    }

    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// The ELF virtual address of a file offset, if a segment maps it.
    pub fn vaddr_of(&self, file_offset: u64) -> Option<u64> {
        // Segment fields come from the file: a corrupt one must not overflow.
        self.segments
            .iter()
            .find(|s| file_offset >= s.file_offset && file_offset - s.file_offset < s.file_size)
            .and_then(|s| s.vaddr.checked_add(file_offset - s.file_offset))
    }

    /// The row covering `vaddr`.
    pub fn lookup(&self, vaddr: u64) -> Option<&Row> {
        let vaddr = u32::try_from(vaddr).ok()?;
        let i = self.rows.partition_point(|r| r.start <= vaddr);
        i.checked_sub(1).map(|i| &self.rows[i])
    }
}

fn section_data<'d, R: object::ReadRef<'d>>(
    section: &object::Section<'d, '_, R>,
) -> Result<Vec<u8>, TableError> {
    let (_, size) = section.file_range().unwrap_or((0, 0));
    if size > MAX_SECTION_BYTES {
        return Err(TableError::TooLarge(size));
    }
    Ok(section.data()?.to_vec())
}

fn collect_rows<'d, S>(section: &S, bases: &BaseAddresses, rows: &mut Vec<Row>)
where
    S: UnwindSection<EndianSlice<'d, LittleEndian>>,
{
    let mut ctx = UnwindContext::new();
    let mut entries = section.entries(bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            // The entry list cannot be resynchronised after a bad length.
            Err(_) => break,
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        let end = fde.initial_address().wrapping_add(fde.len());
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        let before = rows.len();
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    if rows.len() >= MAX_ROWS {
                        return;
                    }
                    if let Some(row) = convert(row) {
                        rows.push(row);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // A broken program: drop this FDE's partial rows.
                    rows.truncate(before);
                    break;
                }
            }
        }
        if rows.len() > before
            && rows.len() < MAX_ROWS
            && let Ok(start) = u32::try_from(end)
        {
            rows.push(Row {
                start,
                cfa_offset: 0,
                bp_offset: 0,
                cfa: Cfa::Unknown,
            });
        }
    }
}

/// The row in this table's terms; `None` when its address does not fit.
fn convert<T: gimli::ReaderOffset>(row: &gimli::UnwindTableRow<T>) -> Option<Row> {
    let unknown = Row {
        start: u32::try_from(row.start_address()).ok()?,
        cfa_offset: 0,
        bp_offset: 0,
        cfa: Cfa::Unknown,
    };
    // Unspecified means the ABI default (CFA - 8); only an explicit
    // `undefined` marks the outermost frame.
    if matches!(row.register(X86_64::RA), Some(RegisterRule::Undefined)) {
        return Some(Row {
            cfa: Cfa::End,
            ..unknown
        });
    }
    let (cfa, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (Cfa::Sp, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (Cfa::Bp, *offset)
        }
        _ => return Some(unknown),
    };
    let Ok(cfa_offset) = i16::try_from(offset) else {
        return Some(unknown);
    };
    let bp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(n)) => match i8::try_from(n) {
            Ok(n) if n != 0 => n,
            _ => return Some(unknown),
        },
        _ => return Some(unknown),
    };
    Some(Row {
        cfa_offset,
        bp_offset,
        cfa,
        ..unknown
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_sparse_file_is_refused_without_reading_it() {
        let path = std::env::temp_dir().join(format!("selfops-sparse-{}", std::process::id()));
        let file = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // 64 GiB of holes: reading it whole would take minutes and the memory.
        file.set_len(64 << 30).unwrap();
        let start = std::time::Instant::now();
        let built = UnwindTable::build(&file);
        let _ = std::fs::remove_file(&path);
        assert!(built.is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    fn row(start: u32, cfa: Cfa, cfa_offset: i16) -> Row {
        Row {
            start,
            cfa_offset,
            bp_offset: 0,
            cfa,
        }
    }

    #[test]
    fn lookup_and_compaction() {
        let rows = vec![
            row(0x1000, Cfa::Sp, 8),
            row(0x1004, Cfa::Sp, 16),
            row(0x1008, Cfa::Sp, 16),
            row(0x1010, Cfa::Unknown, 0),
            row(0x1010, Cfa::Sp, 8),
        ];
        let table = UnwindTable::from_rows(rows, Box::new([]));
        assert_eq!(table.rows(), 3);
        assert!(table.lookup(0xfff).is_none());
        assert_eq!(table.lookup(0x1005).map(|r| r.cfa_offset), Some(16));
        assert_eq!(table.lookup(0x100f).map(|r| r.cfa_offset), Some(16));
        assert_eq!(table.lookup(0x1010).map(|r| r.cfa), Some(Cfa::Sp));
        assert_eq!(table.lookup(0x1010).map(|r| r.cfa_offset), Some(8));
    }

    #[test]
    fn own_executable_has_rows() {
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let table = UnwindTable::build(&exe).unwrap();
        assert!(table.rows() > 100, "{} rows", table.rows());
        let here = own_executable_has_rows as fn() as usize as u64;
        // Our code is mapped: some row must cover a text address.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| {
                let (range, _) = l.split_once(' ').unwrap();
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (
                    u64::from_str_radix(a, 16).unwrap(),
                    u64::from_str_radix(b, 16).unwrap(),
                );
                (a..b).contains(&here)
            })
            .unwrap();
        let mut fields = line.split_whitespace();
        let start =
            u64::from_str_radix(fields.next().unwrap().split('-').next().unwrap(), 16).unwrap();
        let offset = u64::from_str_radix(fields.nth(1).unwrap(), 16).unwrap();
        let vaddr = table.vaddr_of(here - start + offset).unwrap();
        let row = table.lookup(vaddr).unwrap();
        assert_ne!(row.cfa, Cfa::Unknown);
    }

    #[test]
    fn corrupted_cfi_does_not_panic() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let elf = object::File::parse(&*exe).unwrap();
        let section = elf.section_by_name(".eh_frame").unwrap();
        let (offset, size) = section.file_range().unwrap();
        let (offset, size) = (offset as usize, size as usize);
        let dir = std::env::temp_dir().join(format!("selfops-cfi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..24 {
            let mut bytes = exe.clone();
            // Flip bytes at pseudo-random places of .eh_frame; every
            // third round also truncates the section's tail to garbage.
            for _ in 0..(1 + round * 8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = offset + (state as usize % size.max(1));
                bytes[at] = (state >> 32) as u8;
            }
            if round % 3 == 0 {
                for b in &mut bytes[offset + size / 2..offset + size] {
                    *b = 0xff;
                }
            }
            let path = dir.join("corrupt");
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            if let Ok(table) = UnwindTable::build(&file) {
                assert!(table.rows() <= MAX_ROWS);
                let _ = table.lookup(0x1234);
            }
        }
        let path = dir.join("truncated");
        std::fs::write(&path, &exe[..exe.len() / 3]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = UnwindTable::build(&file);
        std::fs::write(&path, b"\x7fELF garbage").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(UnwindTable::build(&file).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
