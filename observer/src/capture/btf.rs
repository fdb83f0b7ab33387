//! Member offsets of kernel structs, from the running kernel's BTF.
//!
//! In: a raw BTF blob (`/sys/kernel/btf/vmlinux`). Out: the byte offset and
//! size of a member named by its path from a named struct (`sock` →
//! `__sk_common` → `skc_flags`), looking through anonymous structs and
//! unions on the way. Only what the loader needs: aya-obj keeps its type
//! accessors crate-private, so this reads the type and string sections
//! itself. Malformed input is an error, never a panic.

use std::ops::Range;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
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

/// Why an offset could not be found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// The blob is not BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// No struct of that name.
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    /// The struct has no such member (or it is a bitfield).
    #[error("struct {structure} has no byte-aligned member {member}")]
    NoMember {
        /// The struct searched.
        structure: String,
        /// The member path.
        member: String,
    },
}

/// One type: its kind, name, size-or-type word and members (structs and
/// unions only).
#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: u32,
    size_or_type: u32,
    members: Range<usize>,
}

/// A struct or union member.
#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

/// Where a member is: byte offset from the start of the outer struct, and
/// its size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// The parsed types and strings of one BTF blob (little-endian, as every
/// host this runs on).
#[derive(Debug)]
pub struct Btf {
    /// Index 0 is the implicit void type.
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Parses a BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let header_len = u32_at(data, 4)? as usize;
        let section = |offset_at: usize, len_at: usize| -> Result<&[u8], BtfError> {
            let start = header_len + u32_at(data, offset_at)? as usize;
            let len = u32_at(data, len_at)? as usize;
            data.get(start..start + len).ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_section = section(8, 12)?;
        let strings = section(16, 20)?.to_vec();
        let mut types = vec![Type { kind: 0, name: 0, size_or_type: 0, members: 0..0 }];
        let mut members = Vec::new();
        let mut at = 0;
        while at < type_section.len() {
            let name = u32_at(type_section, at)?;
            let info = u32_at(type_section, at + 4)?;
            let size_or_type = u32_at(type_section, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let start = members.len();
            let trailer = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for index in 0..vlen {
                        let member = at + index * 12;
                        let offset = u32_at(type_section, member + 8)?;
                        members.push(Member {
                            name: u32_at(type_section, member)?,
                            type_id: u32_at(type_section, member + 4)?,
                            // With kind_flag the top byte is a bitfield size.
                            bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                            bitfield: kind_flag && offset >> 24 != 0,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT,
                // TYPE_TAG: no trailer.
                0..=19 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at += trailer;
            if at > type_section.len() {
                return Err(BtfError::Malformed("type cut short"));
            }
            types.push(Type { kind, name, size_or_type, members: start..members.len() });
        }
        Ok(Self { types, members, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|byte| *byte == 0).unwrap_or(rest.len())]
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = ty.size_or_type,
                _ => return Some(ty),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(ty.size_or_type),
            KIND_PTR => Some(8),
            _ => None,
        }
    }

    /// Finds `name` among the members of `ty`, inside anonymous structs and
    /// unions too; the offset is in bits from the start of `ty`.
    fn find(&self, ty: &Type, name: &str) -> Option<(u32, Member)> {
        for member in &self.members[ty.members.clone()] {
            if member.name == 0 {
                let inner = self.resolve(member.type_id)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((offset, found)) = self.find(inner, name)
                {
                    return Some((member.bit_offset + offset, found));
                }
            } else if self.name(member.name) == name.as_bytes() {
                return Some((member.bit_offset, *member));
            }
        }
        None
    }

    fn structure(&self, name: &str) -> Result<&Type, BtfError> {
        self.types
            .iter()
            .find(|ty| ty.kind == KIND_STRUCT && self.name(ty.name) == name.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// The member at `path` (each step a member name) of struct `structure`.
    pub fn field(&self, structure: &str, path: &[&str]) -> Result<Field, BtfError> {
        let missing = || BtfError::NoMember { structure: structure.to_owned(), member: path.join(".") };
        let mut ty = self.structure(structure)?;
        let mut bits = 0;
        let mut last = None;
        for (index, step) in path.iter().enumerate() {
            let (offset, member) = self.find(ty, step).ok_or_else(missing)?;
            if member.bitfield || offset % 8 != 0 {
                return Err(missing());
            }
            bits += offset;
            last = Some(member);
            if index + 1 < path.len() {
                ty = self
                    .resolve(member.type_id)
                    .filter(|ty| matches!(ty.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or_else(missing)?;
            }
        }
        let member = last.ok_or_else(missing)?;
        let size = self.size_of(member.type_id).ok_or_else(missing)?;
        Ok(Field { offset: bits / 8, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from type records (already encoded) and strings.
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Blob {
        fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0] }
        }
        fn string(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            at
        }
        fn words(&mut self, words: &[u32]) {
            for word in words {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }
        fn int(&mut self, name: &str, size: u32) {
            let name = self.string(name);
            self.words(&[name, KIND_INT << 24, size, size * 8]);
        }
        fn typedef(&mut self, name: &str, target: u32) {
            let name = self.string(name);
            self.words(&[name, KIND_TYPEDEF << 24, target]);
        }
        /// Members as (name, type id, bit offset, bitfield size).
        fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) {
            let name = self.string(name);
            let kind_flag = members.iter().any(|member| member.3 != 0);
            self.words(&[name, (u32::from(kind_flag) << 31) | (kind << 24) | members.len() as u32, size]);
            for (member, type_id, offset, bits) in members {
                let member = self.string(member);
                self.words(&[member, *type_id, (bits << 24) | offset]);
            }
        }
        fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in
                [HEADER_LEN as u32, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32]
            {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// 1 u32, 2 u64, 3 typedef u64 → 2, 4 anonymous union, 5 sock_common,
    /// 6 sock, 7 tcp_sock.
    fn kernel_like() -> Vec<u8> {
        let mut blob = Blob::new();
        blob.int("unsigned int", 4);
        blob.int("long long unsigned int", 8);
        blob.typedef("u64", 2);
        blob.composite(KIND_UNION, "", 8, &[("skc_flags", 2, 0, 0), ("skc_listener", 2, 0, 0)]);
        blob.composite(
            KIND_STRUCT,
            "sock_common",
            24,
            &[("skc_hash", 1, 0, 0), ("", 4, 64, 0), ("skc_bits", 1, 128, 3)],
        );
        blob.composite(KIND_STRUCT, "sock", 64, &[("__sk_common", 5, 0, 0), ("sk_shutdown", 1, 256, 0)]);
        blob.composite(
            KIND_STRUCT,
            "tcp_sock",
            2304,
            &[("inet_conn", 6, 0, 0), ("segs_out", 1, 12288, 0), ("bytes_acked", 3, 14592, 0)],
        );
        blob.bytes()
    }

    #[test]
    fn members_are_found_through_named_and_anonymous_members() {
        let btf = Btf::parse(&kernel_like()).expect("parses");
        assert_eq!(btf.field("tcp_sock", &["segs_out"]), Ok(Field { offset: 1536, size: 4 }));
        assert_eq!(btf.field("tcp_sock", &["bytes_acked"]), Ok(Field { offset: 1824, size: 8 }));
        assert_eq!(btf.field("sock", &["__sk_common", "skc_flags"]), Ok(Field { offset: 8, size: 8 }));
        assert_eq!(btf.field("sock", &["sk_shutdown"]), Ok(Field { offset: 32, size: 4 }));
    }

    #[test]
    fn missing_struct_member_or_bitfield_is_an_error() {
        let btf = Btf::parse(&kernel_like()).expect("parses");
        assert_eq!(btf.field("udp_sock", &["x"]), Err(BtfError::NoStruct("udp_sock".to_owned())));
        assert!(matches!(btf.field("tcp_sock", &["bytes_sent"]), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.field("sock", &["__sk_common", "skc_bits"]), Err(BtfError::NoMember { .. })));
    }

    #[test]
    fn malformed_blobs_are_errors_not_panics() {
        let blob = kernel_like();
        assert_eq!(Btf::parse(&blob[..10]).err(), Some(BtfError::Malformed("bad magic")));
        for cut in [HEADER_LEN, HEADER_LEN + 7, blob.len() / 2, blob.len() - 1] {
            assert!(Btf::parse(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_kind = blob.clone();
        bad_kind[HEADER_LEN + 7] = 0x1f;
        assert!(Btf::parse(&bad_kind).is_err());
    }

    #[test]
    fn the_running_kernels_tcp_sock_has_the_counters() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else { return };
        let btf = Btf::parse(&data).expect("the kernel's BTF parses");
        for member in ["segs_out", "segs_in", "snd_una", "write_seq"] {
            assert_eq!(btf.field("tcp_sock", &[member]).map(|field| field.size), Ok(4), "{member}");
        }
        for member in ["bytes_acked", "bytes_received"] {
            assert_eq!(btf.field("tcp_sock", &[member]).map(|field| field.size), Ok(8), "{member}");
        }
        assert_eq!(btf.field("sock", &["__sk_common", "skc_flags"]).map(|field| field.size), Ok(8));
    }
}
