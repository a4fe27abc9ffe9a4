//! Another program's XDP on an interface, as a CNI would leave it: a
//! two-instruction program (`r0 = XDP_PASS; exit`) loaded with the raw
//! bpf(2) syscall and attached in generic mode through a BPF link. Detached
//! when dropped (the link goes with its descriptor).

use std::{
    ffi::CString,
    os::fd::{FromRawFd, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_PASS: i32 = 2;
/// Big enough for every field used; the kernel checks the rest is zero.
const ATTR_SIZE: usize = 128;

pub struct ForeignXdp {
    _program: OwnedFd,
    _link: OwnedFd,
    /// The program's name in the kernel.
    pub name: &'static str,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_SIZE]) -> Result<OwnedFd, String> {
    // SAFETY: a valid command and a zero-padded attribute buffer of the
    // size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_SIZE) };
    if fd < 0 {
        return Err(format!("bpf({cmd}): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the syscall returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put_u32(attr: &mut [u8; ATTR_SIZE], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; ATTR_SIZE], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

impl ForeignXdp {
    /// Attaches to `interface` (in the caller's namespace), generic mode.
    pub fn attach(interface: &str) -> Result<Self, String> {
        let name = "foreign_xdp";
        // mov64 r0, XDP_PASS; exit.
        let mut insns = [0u8; 16];
        insns[0] = 0xb7;
        insns[4..8].copy_from_slice(&XDP_PASS.to_ne_bytes());
        insns[8] = 0x95;
        let license = CString::new("GPL").map_err(|e| e.to_string())?;
        let mut attr = [0u8; ATTR_SIZE];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
        put_u32(&mut attr, 4, 2);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut attr, 68, BPF_XDP);
        let program = bpf(BPF_PROG_LOAD, &mut attr)?;

        let ifname = CString::new(interface).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        if ifindex == 0 {
            return Err(format!("{interface}: {}", std::io::Error::last_os_error()));
        }
        let mut attr = [0u8; ATTR_SIZE];
        use std::os::fd::AsRawFd;
        put_u32(&mut attr, 0, program.as_raw_fd() as u32);
        put_u32(&mut attr, 4, ifindex);
        put_u32(&mut attr, 8, BPF_XDP);
        put_u32(&mut attr, 12, XDP_FLAGS_SKB_MODE);
        let link = bpf(BPF_LINK_CREATE, &mut attr)?;
        Ok(Self {
            _program: program,
            _link: link,
            name,
        })
    }
}

/// The name of the XDP program on `interface` (`bpftool net` gives its
/// id, `bpftool prog` its name), if any.
pub fn xdp_program_on(interface: &str) -> Option<String> {
    let json = |args: &[&str]| -> Option<serde_json::Value> {
        let out = std::process::Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let net = json(&["net", "show", "dev", interface])?;
    let id = net
        .as_array()?
        .iter()
        .flat_map(|section| section["xdp"].as_array().into_iter().flatten())
        .find_map(|p| p["id"].as_u64())?;
    let prog = json(&["prog", "show", "id", &id.to_string()])?;
    prog["name"].as_str().map(str::to_owned)
}
