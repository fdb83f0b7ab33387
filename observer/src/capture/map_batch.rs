//! Batched access to a BPF hash map, which aya 0.14 does not wrap.
//!
//! In: a hash map (plain or LRU) and the keys to delete. Out: every entry of
//! one walk of the map, and how many keys were deleted. One
//! `BPF_MAP_LOOKUP_BATCH` or `BPF_MAP_DELETE_BATCH` call moves a whole batch
//! of entries, where aya's iterator makes two `bpf(2)` calls per entry and its
//! `remove` one per key. A kernel that refuses the batch commands (before
//! 5.6, or a map type without them) is read and pruned entry by entry
//! instead, from then on.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError},
};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "operation not supported", which `bpf(2)` returns
/// for a map type without batch operations; libc does not name it.
const ENOTSUPP: i32 = 524;
/// Entries one lookup call may return at first; more when a hash bucket
/// holds more than that (`ENOSPC`).
const FIRST_CHUNK: usize = 1024;
/// No bucket of a sane hash map holds this many entries.
const MAX_CHUNK: usize = 1 << 20;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h). Passed
/// with its own size, the kernel treats the rest of the union as zero.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// Errors of reading or pruning a map.
#[derive(Debug, thiserror::Error)]
pub enum MapBatchError {
    /// A batch command failed.
    #[error("{command} failed after {done} entries")]
    Batch {
        /// `BPF_MAP_LOOKUP_BATCH` or `BPF_MAP_DELETE_BATCH`.
        command: &'static str,
        /// Entries read or deleted before the failure.
        done: usize,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A hash bucket holds more entries than one lookup may return.
    #[error("BPF_MAP_LOOKUP_BATCH: a bucket of the map holds more than {MAX_CHUNK} entries")]
    BucketTooLarge,
    /// The per-entry path failed.
    #[error("reading or deleting a map entry failed")]
    PerKey(#[source] MapError),
}

impl MapBatchError {
    /// True when the kernel does not have the command (EINVAL from kernels
    /// before 5.6) or not for this map type (ENOTSUPP, EOPNOTSUPP).
    fn is_unsupported(&self) -> bool {
        match self {
            Self::Batch { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
            }
            Self::BucketTooLarge | Self::PerKey(_) => false,
        }
    }
}

/// A BPF hash map read whole and pruned in batches; entry by entry once the
/// kernel has refused a batch command.
pub struct BatchedHashMap<K: Pod, V: Pod> {
    map: HashMap<MapData, K, V>,
    /// Lookup buffers; `None` once the kernel refused a batch command.
    batch: Option<Buffers<K, V>>,
}

/// Where the kernel writes one lookup call's keys and values.
struct Buffers<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    /// Entries one call may return.
    chunk: usize,
}

impl<K: Pod, V: Pod> BatchedHashMap<K, V> {
    /// Uses batch commands, with lookups of up to [`FIRST_CHUNK`] entries.
    pub fn new(map: HashMap<MapData, K, V>) -> Self {
        Self::with_chunk(map, FIRST_CHUNK)
    }

    /// Uses batch commands, with lookups of up to `chunk` entries at first.
    pub fn with_chunk(map: HashMap<MapData, K, V>, chunk: usize) -> Self {
        let chunk = chunk.clamp(1, MAX_CHUNK);
        Self { map, batch: Some(Buffers { keys: Vec::new(), values: Vec::new(), chunk }) }
    }

    /// Reads and deletes entry by entry, as after the kernel refused a batch command.
    #[cfg(test)]
    pub fn per_key(map: HashMap<MapData, K, V>) -> Self {
        Self { map, batch: None }
    }

    /// True while batch commands are in use.
    pub fn is_batched(&self) -> bool {
        self.batch.is_some()
    }

    /// Appends every entry of the map to `out`, as one walk: an entry deleted
    /// meanwhile (LRU eviction) is absent, one added meanwhile may be. On an
    /// error `out` is as it was.
    pub fn read_all(&mut self, out: &mut Vec<(K, V)>) -> Result<(), MapBatchError> {
        let start = out.len();
        if let Some(buffers) = &mut self.batch {
            match buffers.lookup_all(&self.map, out) {
                Ok(()) => return Ok(()),
                Err(error) if error.is_unsupported() => {
                    out.truncate(start);
                    self.fall_back(&error);
                }
                Err(error) => {
                    out.truncate(start);
                    return Err(error);
                }
            }
        }
        for entry in self.map.iter() {
            match entry {
                Ok(entry) => out.push(entry),
                // Deleted between finding its key and reading it.
                Err(MapError::KeyNotFound) => {}
                Err(error) => {
                    out.truncate(start);
                    return Err(MapBatchError::PerKey(error));
                }
            }
        }
        Ok(())
    }

    /// Deletes `keys`; those already gone (evicted) are skipped. Returns how
    /// many were deleted.
    pub fn delete(&mut self, keys: &[K]) -> Result<usize, MapBatchError> {
        if self.batch.is_some() {
            match delete_batch(&self.map, keys) {
                Ok(deleted) => return Ok(deleted),
                Err(error) if error.is_unsupported() => self.fall_back(&error),
                Err(error) => return Err(error),
            }
        }
        let mut deleted = 0;
        for key in keys {
            match self.map.remove(key) {
                Ok(()) => deleted += 1,
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(error)) if error.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => return Err(MapBatchError::PerKey(error)),
            }
        }
        Ok(deleted)
    }

    fn fall_back(&mut self, error: &MapBatchError) {
        let cause = std::error::Error::source(error).map(ToString::to_string).unwrap_or_default();
        tracing::warn!(
            %error,
            %cause,
            "the kernel refused a batch command on the flow map: reading and deleting it entry by entry \
             (two bpf calls per entry per poll)"
        );
        self.batch = None;
    }
}

impl<K: Pod, V: Pod> Buffers<K, V> {
    fn lookup_all(&mut self, map: &HashMap<MapData, K, V>, out: &mut Vec<(K, V)>) -> Result<(), MapBatchError> {
        let fd = map.map().fd().as_fd().as_raw_fd();
        // Where a walk resumes: hash maps write a `u32` bucket index there,
        // other map types a key, so it has room for either.
        let mut token = MaybeUninit::<(K, u64)>::zeroed();
        let token_ptr = token.as_mut_ptr() as u64;
        let mut first = true;
        let mut read = 0;
        loop {
            self.keys.clear();
            self.values.clear();
            self.keys.reserve(self.chunk);
            self.values.reserve(self.chunk);
            let count = u32::try_from(self.chunk).unwrap_or(u32::MAX);
            let mut attr = BatchAttr {
                // The first call starts the walk; the others resume it where
                // the previous one left the token.
                in_batch: if first { 0 } else { token_ptr },
                out_batch: token_ptr,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count,
                map_fd: fd as u32,
                ..BatchAttr::default()
            };
            // SAFETY: `keys` and `values` have room for `count` entries each and
            // the token for what a walk of any map type writes; the map's
            // key and value sizes are `K`'s and `V`'s (checked by aya's `HashMap`).
            let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
            let done = match result {
                Ok(()) => false,
                // The walk is over; `count` entries came with this last call.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => true,
                // The next bucket does not fit: nothing was copied and the
                // token did not move, so the same call is repeated bigger.
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => {
                    if self.chunk >= MAX_CHUNK {
                        return Err(MapBatchError::BucketTooLarge);
                    }
                    self.chunk = (self.chunk * 2).min(MAX_CHUNK);
                    continue;
                }
                Err(source) => {
                    return Err(MapBatchError::Batch { command: "BPF_MAP_LOOKUP_BATCH", done: read, source });
                }
            };
            let filled = (attr.count as usize).min(self.chunk);
            // SAFETY: the kernel wrote `filled` (at most `count`) keys and
            // values, and `K` and `V` are plain data for which any bytes are valid.
            unsafe {
                self.keys.set_len(filled);
                self.values.set_len(filled);
            }
            out.extend(self.keys.iter().copied().zip(self.values.iter().copied()));
            read += filled;
            first = false;
            if done {
                return Ok(());
            }
        }
    }
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`. The kernel stops at the first
/// key it cannot delete and says how many it did; a key already gone is
/// skipped and the rest follow.
fn delete_batch<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, keys: &[K]) -> Result<usize, MapBatchError> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut done = 0;
    let mut deleted = 0;
    while done < keys.len() {
        let rest = &keys[done..];
        let count = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let mut attr = BatchAttr { keys: rest.as_ptr() as u64, count, map_fd: fd as u32, ..BatchAttr::default() };
        // SAFETY: `keys` holds at least `count` keys of the map's key size (checked by aya's `HashMap`).
        let result = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        let processed = (attr.count as usize).min(count as usize);
        deleted += processed;
        match result {
            Ok(()) => done += count as usize,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => done += processed + 1,
            Err(source) => {
                return Err(MapBatchError::Batch { command: "BPF_MAP_DELETE_BATCH", done: deleted, source });
            }
        }
    }
    Ok(deleted)
}

/// Calls `bpf(2)` with a batch command.
///
/// # Safety
///
/// The buffers `attr` points to must be valid for what `command` reads and
/// writes: `count` keys and (for lookups) `count` values of the map's sizes,
/// and a batch token.
unsafe fn bpf(command: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `batch` member of `union bpf_attr` of the
    // size passed; the caller vouches for the buffers it points to.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, std::ptr::from_mut(attr), size_of::<BatchAttr>()) };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use aya::maps::Map;
    use observer_common::{FlowKey, FlowStats};

    use super::*;

    /// `enum bpf_cmd` and `enum bpf_map_type` values (include/uapi/linux/bpf.h).
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

    /// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`.
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }

    /// A standalone LRU hash map shaped like the flow map (aya creates only
    /// plain hash maps standalone).
    fn lru_flow_map(max_entries: u32) -> OwnedFd {
        let mut attr = CreateAttr {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size: size_of::<FlowKey>() as u32,
            value_size: size_of::<FlowStats>() as u32,
            max_entries,
            map_flags: 0,
        };
        // SAFETY: `attr` is a valid `BPF_MAP_CREATE` prefix of `union bpf_attr` of the size passed.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &raw mut attr, size_of::<CreateAttr>()) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd")) }
    }

    fn handle(fd: &OwnedFd) -> HashMap<MapData, FlowKey, FlowStats> {
        let data = MapData::from_fd(fd.try_clone().expect("dup")).expect("map data");
        HashMap::try_from(Map::from_map_data(data).expect("map")).expect("LRU hash map")
    }

    fn key(id: u32) -> FlowKey {
        let mut remote_addr = [0; 16];
        remote_addr[..4].copy_from_slice(&id.to_be_bytes());
        FlowKey { cgroup_id: 7, remote_addr, local_port: 8080, remote_port: 40_000, protocol: 6, ..FlowKey::default() }
    }

    fn id(key: &FlowKey) -> u32 {
        u32::from_be_bytes(key.remote_addr[..4].try_into().expect("4 bytes"))
    }

    fn stats(id: u32) -> FlowStats {
        FlowStats { first_seen_ns: u64::from(id), bytes_out: u64::from(id) * 3, ..FlowStats::default() }
    }

    /// The ids read, sorted, each checked against its value.
    fn ids(entries: &[(FlowKey, FlowStats)]) -> Vec<u32> {
        let mut ids: Vec<u32> =
            entries.iter().inspect(|(key, value)| assert_eq!(*value, stats(id(key)))).map(|(key, _)| id(key)).collect();
        ids.sort_unstable();
        ids
    }

    fn read(map: &mut BatchedHashMap<FlowKey, FlowStats>) -> Vec<u32> {
        let mut entries = Vec::new();
        map.read_all(&mut entries).expect("read");
        ids(&entries)
    }

    #[test]
    fn batch_read_and_delete_are_exact_on_a_real_lru_map() {
        if !observer_tests::root_or_skip("batch_read_and_delete_are_exact_on_a_real_lru_map") {
            return;
        }
        const FLOWS: u32 = 3000;
        // Room to spare: an LRU map may evict before it is full.
        let fd = lru_flow_map(16_384);
        let mut filler = handle(&fd);
        for id in 0..FLOWS {
            filler.insert(key(id), stats(id), 0).expect("insert");
        }
        // 64 entries a call: a walk of about 50 calls.
        let mut map = BatchedHashMap::with_chunk(handle(&fd), 64);
        assert_eq!(read(&mut map), (0..FLOWS).collect::<Vec<_>>());
        assert!(map.is_batched(), "the kernel refused the batch commands");
        // The per-entry path sees the same.
        assert_eq!(read(&mut BatchedHashMap::per_key(handle(&fd))), (0..FLOWS).collect::<Vec<_>>());

        // Keys 100..200 are gone before the batch delete (as if evicted): skipped, not counted.
        for id in 100..200 {
            filler.remove(&key(id)).expect("remove");
        }
        let ended: Vec<FlowKey> = (0..2000).map(key).collect();
        assert_eq!(map.delete(&ended).expect("delete"), 1900);
        assert_eq!(read(&mut map), (2000..FLOWS).collect::<Vec<_>>());
        let rest: Vec<FlowKey> = (2000..FLOWS).map(key).collect();
        assert_eq!(map.delete(&rest).expect("delete"), 1000);
        assert_eq!(read(&mut map), Vec::<u32>::new());
        assert_eq!(filler.keys().count(), 0, "the map is empty");
        assert!(map.is_batched());
    }

    #[test]
    fn a_bucket_bigger_than_the_buffer_grows_it() {
        if !observer_tests::root_or_skip("a_bucket_bigger_than_the_buffer_grows_it") {
            return;
        }
        const FLOWS: u32 = 3000;
        // 3,000 keys in 4,096 buckets: hundreds of buckets hold two or more.
        let fd = lru_flow_map(4096);
        let mut filler = handle(&fd);
        for id in 0..FLOWS {
            filler.insert(key(id), stats(id), 0).expect("insert");
        }
        let mut map = BatchedHashMap::with_chunk(handle(&fd), 1);
        assert_eq!(read(&mut map), (0..FLOWS).collect::<Vec<_>>());
        let chunk = map.batch.as_ref().map_or(0, |buffers| buffers.chunk);
        assert!(chunk > 1, "a bucket of two entries did not fit one entry's room: chunk {chunk}");
    }

    #[test]
    fn refusals_that_mean_unsupported() {
        let error = |errno| MapBatchError::Batch {
            command: "BPF_MAP_LOOKUP_BATCH",
            done: 0,
            source: io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::EINVAL, libc::EOPNOTSUPP, ENOTSUPP] {
            assert!(error(errno).is_unsupported(), "{errno}");
        }
        for errno in [libc::ENOMEM, libc::EPERM, libc::EFAULT, libc::ENOENT] {
            assert!(!error(errno).is_unsupported(), "{errno}");
        }
        assert!(!MapBatchError::BucketTooLarge.is_unsupported());
    }
}
