//! Random-looking identifiers for pods: a seed in, Kubernetes-style UIDs, container ids and MACs out.

use std::time::{SystemTime, UNIX_EPOCH};

/// A small splitmix64 generator: identifiers only need to be unique, not unpredictable.
#[derive(Debug)]
pub(crate) struct Ids(u64);

impl Ids {
    /// A generator seeded from the clock, the pid and `salt`, so two labs never share identifiers.
    pub(crate) fn new(salt: u64) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Self(nanos ^ (u64::from(std::process::id()) << 32) ^ salt.rotate_left(17))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A version-4 UUID like the ones the API server gives pods: `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
    pub(crate) fn uuid(&mut self) -> String {
        let hi = self.next();
        let lo = self.next();
        let hi = (hi & !0xf000) | 0x4000;
        let lo = (lo & !(0xc << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }

    /// A container id as containerd and CRI-O print them: 64 lowercase hex digits.
    pub(crate) fn container_id(&mut self) -> String {
        (0..4).map(|_| format!("{:016x}", self.next())).collect()
    }

    /// A locally administered unicast MAC address.
    pub(crate) fn mac(&mut self) -> String {
        let b = self.next().to_be_bytes();
        format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4])
    }
}

#[cfg(test)]
mod tests {
    use super::Ids;

    #[test]
    fn formats() {
        let mut ids = Ids::new(1);
        let uuid = ids.uuid();
        let parts: Vec<_> = uuid.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{uuid}");
        assert_eq!(&uuid[14..15], "4", "version nibble in {uuid}");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"), "variant nibble in {uuid}");
        let cid = ids.container_id();
        assert_eq!(cid.len(), 64);
        assert!(cid.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let mac = ids.mac();
        assert!(mac.starts_with("02:") && mac.len() == 17, "{mac}");
        assert_ne!(ids.uuid(), uuid);
    }
}
