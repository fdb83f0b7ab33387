//! A shared value's JSON, rendered by `serde_json` on first use and kept
//! beside it: for the values many flow-log lines carry (an endpoint, a
//! verdict), which the flow log's encoder then copies instead of encoding
//! again. Render only once the value is shared, and so no longer changes.

use std::{fmt, sync::OnceLock};

use serde::Serialize;

/// The JSON of the value that holds it, once rendered. A cache: equal to any
/// other, and cloned empty (a clone may be changed before it is shared).
#[derive(Default)]
pub struct RenderedJson(OnceLock<Box<str>>);

impl RenderedJson {
    /// `value`'s JSON: kept, or rendered now and kept.
    pub fn get_or_render<T: Serialize + ?Sized>(&self, value: &T) -> Result<&str, serde_json::Error> {
        if let Some(json) = self.0.get() {
            return Ok(json);
        }
        let json = serde_json::to_string(value)?.into_boxed_str();
        Ok(self.0.get_or_init(|| json))
    }
}

impl PartialEq for RenderedJson {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for RenderedJson {}

impl Clone for RenderedJson {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl fmt::Debug for RenderedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() { "RenderedJson(kept)" } else { "RenderedJson(none)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_once_and_clones_start_empty() {
        let cache = RenderedJson::default();
        let first = cache.get_or_render(&["a", "b"]).expect("renders").as_ptr();
        // A different value is not rendered again: the kept JSON is returned.
        let kept = cache.get_or_render(&["c"]).expect("kept");
        assert_eq!((kept, kept.as_ptr()), (r#"["a","b"]"#, first));
        let clone = cache.clone();
        assert_eq!(clone.get_or_render(&["c"]).expect("renders"), r#"["c"]"#);
        assert_eq!(clone, cache, "equality ignores what is kept");
    }
}
