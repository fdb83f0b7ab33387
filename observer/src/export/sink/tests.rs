//! The sink on real files: a missing folder, a read-only and a full tmpfs,
//! rotation and reopen.

use std::fs;

use observer_tests::{Tmpfs, root_or_skip};

use super::*;

/// `count` lines numbered from `first`, each `width` bytes with its newline.
fn lines(first: u64, count: u64, width: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for n in first..first + count {
        let head = format!("{{\"n\":{n},\"pad\":\"");
        let pad = width - head.len() - 3;
        out.extend_from_slice(head.as_bytes());
        out.extend(std::iter::repeat_n(b'x', pad));
        out.extend_from_slice(b"\"}\n");
    }
    out
}

/// The numbers of the lines of `path`; panics on a line that is not whole JSON.
fn numbers(path: &Path) -> Vec<u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "{} ends in a cut line", path.display());
    text.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|error| panic!("cut line {line:?}: {error}"));
            value["n"].as_u64().expect("n")
        })
        .collect()
}

fn open(path: &Path, rotation: Rotation) -> LineSink {
    LineSink::open(SinkName::FlowLog, Target::File(path.to_owned()), rotation, Reopen::default()).expect("opens")
}

#[test]
fn a_missing_directory_is_named_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nowhere/flows.jsonl");
    let error = LineSink::open(SinkName::DnsLog, Target::File(path.clone()), Rotation::OFF, Reopen::default())
        .expect_err("no directory");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("directory {} does not exist", dir.path().join("nowhere").display())),
        "{message}"
    );
    assert!(message.contains("DNS log"), "{message}");
}

#[test]
fn a_read_only_file_is_refused_at_open() {
    if !root_or_skip("a_read_only_file_is_refused_at_open") {
        return;
    }
    let tmpfs = Tmpfs::mount(64 << 10).expect("tmpfs");
    let path = tmpfs.path().join("findings.jsonl");
    fs::write(&path, "{}\n").expect("write");
    tmpfs.remount_read_only().expect("read-only");
    let error = LineSink::open(SinkName::FindingsLog, Target::File(path.clone()), Rotation::OFF, Reopen::default())
        .expect_err("read-only");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("Read-only file system"), "{message}");
}

#[test]
fn a_full_disk_drops_and_counts_whole_lines_and_resumes() {
    if !root_or_skip("a_full_disk_drops_and_counts_whole_lines_and_resumes") {
        return;
    }
    let tmpfs = Tmpfs::mount(64 << 10).expect("tmpfs");
    let path = tmpfs.path().join("flows.jsonl");
    let mut sink = open(&path, Rotation::OFF);
    let health = sink.health();
    sink.write(&lines(0, 10, 100), 10);
    // 3000 bytes of 100-byte lines; the free space ends inside one of them.
    // The log's page has 3096 bytes left: 30 more lines and 96 bytes fit.
    let filler = tmpfs.fill("filler").expect("fill");
    let mut next = 10;
    while health.is_up() && next < 1000 {
        sink.write(&lines(next, 30, 100), 30);
        next += 30;
    }
    assert!(!health.is_up(), "a full disk marks the sink failing");
    assert!(sink.partial.is_some(), "the free space ended inside a line");
    assert!(!fs::read(&path).expect("read").ends_with(b"\n"), "its rest waits for space");
    let (reason, _) = health.failure().expect("a failure");
    assert!(reason.contains("No space left on device"), "{reason}");
    // More batches while full: every line of them dropped and counted.
    sink.write(&lines(next, 5, 100), 5);
    next += 5;
    assert_eq!(health.written() + health.dropped() + u64::from(sink.partial.is_some()), next);
    assert!(health.dropped() >= 5);
    fs::remove_file(&filler).expect("free the space");
    sink.write(&lines(next, 3, 100), 3);
    next += 3;
    assert!(health.is_up(), "writing resumes when space returns");
    assert!(sink.partial.is_none());
    assert_eq!(health.written() + health.dropped(), next, "every line written or counted");
    sink.close();
    let written = numbers(&path);
    assert_eq!(written.len() as u64, health.written());
    assert_eq!(&written[written.len() - 3..], &[next - 3, next - 2, next - 1]);
}

#[test]
fn a_line_cut_by_a_full_disk_is_cut_off_at_close() {
    if !root_or_skip("a_line_cut_by_a_full_disk_is_cut_off_at_close") {
        return;
    }
    let tmpfs = Tmpfs::mount(64 << 10).expect("tmpfs");
    let path = tmpfs.path().join("flows.jsonl");
    let mut sink = open(&path, Rotation::OFF);
    let health = sink.health();
    // A page of the log in use, then no more room: 11 lines and a third fit.
    sink.write(&lines(0, 1, 333), 1);
    tmpfs.fill("filler").expect("fill");
    let mut next = 1;
    while health.is_up() && next < 10_000 {
        sink.write(&lines(next, 7, 333), 7);
        next += 7;
    }
    assert!(!health.is_up());
    assert!(sink.partial.is_some(), "the file's last page ends inside a line");
    assert!(!fs::read(&path).expect("read").ends_with(b"\n"), "cut while running");
    sink.close();
    let written = numbers(&path);
    assert_eq!(written.len() as u64, health.written());
    assert_eq!(health.written() + health.dropped(), next);
}

#[test]
fn rotation_keeps_at_most_max_files_of_at_most_max_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flows.jsonl");
    let mut sink = open(&path, Rotation { max_bytes: 1000, max_files: 3 });
    for batch in 0..40 {
        sink.write(&lines(batch * 7, 7, 60), 7);
    }
    let health = sink.health();
    sink.close();
    assert!(!rotated_path(&path, 3).exists(), "the oldest is removed");
    // 16 lines of 60 bytes fill a file: 280 lines make 17 full files and 8 lines.
    for file in [rotated_path(&path, 2), rotated_path(&path, 1)] {
        assert_eq!(fs::metadata(&file).expect("kept").len(), 960, "{}", file.display());
    }
    let mut kept = numbers(&rotated_path(&path, 2));
    kept.extend(numbers(&rotated_path(&path, 1)));
    kept.extend(numbers(&path));
    assert_eq!(kept, (240..280).collect::<Vec<_>>(), "the newest lines, in order, none missing");
    assert_eq!(health.rotations(), 17);
    assert_eq!((health.written(), health.dropped()), (280, 0));
}

#[test]
fn a_line_longer_than_the_limit_gets_a_file_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dns.jsonl");
    let mut sink = open(&path, Rotation { max_bytes: 100, max_files: 2 });
    sink.write(&lines(0, 1, 50), 1);
    sink.write(&lines(1, 1, 300), 1);
    sink.write(&lines(2, 1, 50), 1);
    sink.close();
    assert_eq!(numbers(&rotated_path(&path, 1)), vec![1]);
    assert_eq!(numbers(&path), vec![2]);
}

#[test]
fn one_file_means_the_file_starts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flows.jsonl");
    let mut sink = open(&path, Rotation { max_bytes: 200, max_files: 1 });
    sink.write(&lines(0, 10, 50), 10);
    sink.close();
    assert_eq!(numbers(&path), vec![8, 9]);
    assert!(!rotated_path(&path, 1).exists());
}

#[test]
fn reopen_moves_writing_to_a_new_file_without_losing_a_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flows.jsonl");
    let reopen = Reopen::default();
    let mut sink =
        LineSink::open(SinkName::FlowLog, Target::File(path.clone()), Rotation::OFF, reopen.clone()).expect("opens");
    sink.write(&lines(0, 3, 40), 3);
    let moved = dir.path().join("flows.jsonl.old");
    fs::rename(&path, &moved).expect("move away");
    sink.write(&lines(3, 2, 40), 2);
    reopen.request();
    sink.write(&lines(5, 4, 40), 4);
    sink.close();
    assert_eq!(numbers(&moved), vec![0, 1, 2, 3, 4], "lines before the reopen stay in the moved file");
    assert_eq!(numbers(&path), vec![5, 6, 7, 8]);
}

#[test]
fn a_reopen_that_fails_keeps_the_old_file_and_is_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("logs");
    fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("flows.jsonl");
    let reopen = Reopen::default();
    let mut sink =
        LineSink::open(SinkName::FlowLog, Target::File(path.clone()), Rotation::OFF, reopen.clone()).expect("opens");
    let health = sink.health();
    sink.write(&lines(0, 1, 40), 1);
    let moved = dir.path().join("logs.old");
    fs::rename(&sub, &moved).expect("move the folder away");
    reopen.request();
    sink.write(&lines(1, 1, 40), 1);
    assert!(!health.is_up(), "the reopen failed");
    assert!(health.failure().expect("failure").0.contains("does not exist"));
    fs::create_dir(&sub).expect("mkdir again");
    sink.write(&lines(2, 1, 40), 1);
    assert!(health.is_up());
    sink.close();
    assert_eq!(numbers(&moved.join("flows.jsonl")), vec![0, 1]);
    assert_eq!(numbers(&path), vec![2]);
    assert_eq!(health.dropped(), 0);
}

#[test]
fn a_device_is_never_rotated() {
    let mut sink = open(Path::new("/dev/null"), Rotation { max_bytes: 4096, max_files: 2 });
    for n in 0..10 {
        sink.write(&lines(n * 100, 100, 50), 100);
    }
    assert_eq!((sink.health().rotations(), sink.health().written()), (0, 1000));
    assert!(!rotated_path(Path::new("/dev/null"), 1).exists());
}
