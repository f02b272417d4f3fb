//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member, following anonymous structs and unions. The kernel program
//! uses these offsets instead of compiled-in ones, so one object runs on many kernels.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    name_off: u32,
    kind: u32,
    /// `type` for modifiers/typedefs; unused for others.
    referenced: u32,
    members: Vec<Member>,
}

/// The parsed type section: structs and unions with their members, and the modifiers needed
/// to see through typedefs.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (big-endian BTF is not supported)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let types = parse_types(type_data)?;
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (index, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name_off != 0 {
                let name = btf.name(ty.name_off).to_owned();
                btf.structs_by_name.entry(name).or_insert(index as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Sees through typedefs and const/volatile/restrict/type tags.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.referenced
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt`, searching anonymous members too.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find_member(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        for m in &ty.members {
            let bits = base_bits + m.bit_offset;
            if m.name_off == 0 {
                let inner = self.resolve(m.type_id)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(m.type_id, member, bits)
                {
                    return Some(found);
                }
            } else if self.name(m.name_off) == member {
                return Some(bits);
            }
        }
        None
    }
}

fn parse_types(data: &[u8]) -> Result<Vec<Type>, BtfError> {
    let mut types = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let name_off = u32_at(data, at)?;
        let info = u32_at(data, at + 4)?;
        let size_or_type = u32_at(data, at + 8)?;
        at += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let mut members = Vec::new();
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION => {
                for i in 0..vlen {
                    let m = at + i * 12;
                    let offset = u32_at(data, m + 8)?;
                    members.push(Member {
                        name_off: u32_at(data, m)?,
                        type_id: u32_at(data, m + 4)?,
                        // With kind_flag the top 8 bits are a bitfield size.
                        bit_offset: if kind_flag {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        },
                    });
                }
                vlen * 12
            }
            KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
            KIND_DATASEC | KIND_ENUM64 => vlen * 12,
            0 | 20.. => return Err(BtfError::Malformed("unknown type kind")),
            _ => 0,
        };
        at += extra;
        types.push(Type {
            name_off,
            kind,
            referenced: size_or_type,
            members,
        });
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF, when it has one (all kernels this agent supports do).
    fn kernel_btf() -> Option<Btf> {
        std::path::Path::new("/sys/kernel/btf/vmlinux")
            .exists()
            .then(|| Btf::from_sys_fs().unwrap())
    }

    #[test]
    fn finds_task_struct_members_including_anonymous_nesting() {
        let Some(btf) = kernel_btf() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
            return;
        };
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        let parent = btf.member_offset("task_struct", "real_parent").unwrap();
        assert!(tgid > 0 && parent > tgid);
        // arg_start lives in an anonymous struct inside mm_struct on current kernels.
        let start = btf.member_offset("mm_struct", "arg_start").unwrap();
        let end = btf.member_offset("mm_struct", "arg_end").unwrap();
        assert_eq!(end, start + 8);
        assert!(matches!(
            btf.member_offset("task_struct", "no_such_member"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(b"nope"), Err(BtfError::Malformed(_))));
        let mut header = vec![0x9f, 0xeb, 1, 0];
        header.extend_from_slice(&24u32.to_le_bytes());
        header.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(Btf::parse(&header), Err(BtfError::Malformed(_))));
    }
}
