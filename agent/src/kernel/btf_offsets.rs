//! Kernel struct member offsets from /sys/kernel/btf/vmlinux.
//!
//! Rust eBPF gets no CO-RE relocations, so the offsets the socket sensor
//! needs (task → files → fdtable → file → socket → sock) are resolved here
//! at start-up and passed to the kernel programs as a global.

use btf_rs::{Btf, Type};
use selfops_ebpf::SocketOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfOffsetError {
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {strukt}.{member} is a bitfield")]
    Bitfield { strukt: String, member: String },
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Byte offset of `member` in `struct strukt`, looking through anonymous
/// unions and structs (as in `struct sock_common`).
pub fn member_offset(btf: &Btf, strukt: &str, member: &str) -> Result<u32, BtfOffsetError> {
    let ty = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| BtfOffsetError::NoStruct(strukt.to_owned()))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| BtfOffsetError::NoStruct(strukt.to_owned()))?;
    let (bits, bitfield) =
        find_member(btf, &ty, member, 0)?.ok_or_else(|| BtfOffsetError::NoMember {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        })?;
    if bitfield || bits % 8 != 0 {
        return Err(BtfOffsetError::Bitfield {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        });
    }
    Ok(bits / 8)
}

/// Bit offset of `name` inside `ty` (a struct or union) and whether it is a
/// bitfield, searching anonymous members depth-first. `base` is `ty`'s own
/// bit offset.
fn find_member(
    btf: &Btf,
    ty: &Type,
    name: &str,
    base: u32,
) -> Result<Option<(u32, bool)>, BtfOffsetError> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        let offset = base + m.bit_offset();
        let member_name = btf.resolve_name(m).unwrap_or_default();
        if member_name == name {
            let bitfield = m.bitfield_size().is_some_and(|size| size != 0);
            return Ok(Some((offset, bitfield)));
        }
        if member_name.is_empty() {
            let inner = btf.resolve_chained_type(m)?;
            if let Some(found) = find_member(btf, &inner, name, offset)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// Every offset the socket sensor reads.
pub fn socket_offsets() -> Result<SocketOffsets, BtfOffsetError> {
    let btf = Btf::from_file(VMLINUX)?;
    let off = |s: &str, m: &str| member_offset(&btf, s, m);
    Ok(SocketOffsets {
        task_files: off("task_struct", "files")?,
        files_fdt: off("files_struct", "fdt")?,
        fdtable_max_fds: off("fdtable", "max_fds")?,
        fdtable_fd: off("fdtable", "fd")?,
        file_inode: off("file", "f_inode")?,
        file_private_data: off("file", "private_data")?,
        inode_mode: off("inode", "i_mode")?,
        socket_sk: off("socket", "sk")?,
        sock_family: off("sock_common", "skc_family")?,
        sock_num: off("sock_common", "skc_num")?,
        sock_dport: off("sock_common", "skc_dport")?,
        sock_daddr: off("sock_common", "skc_daddr")?,
        sock_rcv_saddr: off("sock_common", "skc_rcv_saddr")?,
        sock_v6_daddr: off("sock_common", "skc_v6_daddr")?,
        sock_v6_rcv_saddr: off("sock_common", "skc_v6_rcv_saddr")?,
        sock_protocol: off("sock", "sk_protocol")?,
        sock_type: off("sock", "sk_type")?,
        sock_net: off("sock_common", "skc_net")?,
        // `ns` is a `struct ns_common` embedded in `struct net`.
        net_ns_inum: off("net", "ns")?
            .checked_add(off("ns_common", "inum")?)
            .ok_or_else(|| BtfOffsetError::NoMember {
                strukt: "net".to_owned(),
                member: "ns.inum".to_owned(),
            })?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_this_kernels_offsets() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("SKIP: no {VMLINUX}");
            return;
        }
        let o = socket_offsets().unwrap();
        // sock_common starts struct sock; the address pair leads it.
        assert_eq!(o.sock_daddr, 0);
        assert_eq!(o.sock_rcv_saddr, 4);
        assert!(o.sock_dport >= 8 && o.sock_num == o.sock_dport + 2, "{o:?}");
        assert!(o.sock_protocol > o.sock_v6_rcv_saddr);
        // skc_net follows the address pair, ports and family in sock_common.
        assert!(o.sock_net > o.sock_dport, "{o:?}");
        assert!(o.net_ns_inum > 0, "{o:?}");
        let btf = Btf::from_file(VMLINUX).unwrap();
        assert!(member_offset(&btf, "sock", "no_such_member").is_err());
        assert!(member_offset(&btf, "no_such_struct", "x").is_err());
    }
}
