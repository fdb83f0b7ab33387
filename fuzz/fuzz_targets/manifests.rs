//! Fuzzes the manifest loader the way a hostile or broken file reaches it:
//! the first input byte picks YAML or JSON, the rest is the file's text.
//! Nothing may panic, and the bounds must hold: every object and error comes
//! from some document of the text, every error names a line inside it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use observer::inventory::manifests;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // The loader refuses text that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let name = if selector & 1 == 0 { "fuzz.yaml" } else { "fuzz.json" };
    let loaded = manifests::parse(Path::new(name), text);
    let lines = text.lines().count().max(1);
    for error in &loaded.errors {
        assert!(error.origin.line <= lines + 1, "{error} is past the end ({lines} lines)");
        assert!(!error.reason.is_empty());
    }
    for loaded in &loaded.objects {
        assert!(loaded.origin.line <= lines + 1);
    }
    // A document yields at most a List's items; an item takes some bytes.
    assert!(loaded.objects.len() + loaded.skipped.len() <= text.len() / 2 + 1);
});
