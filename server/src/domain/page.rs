//! Pagination: page sizes and opaque page tokens.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::error::{Error, Result};

/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size; larger requests are capped.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A validated page request: at most `size` items after the key `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Number of items wanted.
    pub size: usize,
    /// Sort key of the last item of the previous page.
    pub after: Option<String>,
}

impl PageRequest {
    /// Validates `page_size` and decodes `page_token`.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self> {
        let size = match page_size {
            n if n < 0 => {
                return Err(Error::invalid("page_size", "must not be negative"));
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let bytes = URL_SAFE_NO_PAD
                .decode(page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("k:").map(str::to_owned))
                // Keys are ids and names, never control characters (a NUL
                // would even reach PostgreSQL, which cannot hold one).
                .filter(|k| !k.chars().any(char::is_control));
            match bytes {
                Some(k) => Some(k),
                None => {
                    return Err(Error::invalid(
                        "page_token",
                        "not a token returned by a previous page",
                    ));
                }
            }
        };
        Ok(Self { size, after })
    }

    /// Splits `items` (fetched with `size + 1` as limit) into the page and the
    /// next page token.
    pub fn finish<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        if items.len() > self.size {
            items.truncate(self.size);
            let next = items.last().map(|t| encode(&key(t))).unwrap_or_default();
            (items, next)
        } else {
            (items, String::new())
        }
    }

    /// The limit to fetch: one more than the page, to know whether more follow.
    pub fn fetch_limit(&self) -> i64 {
        self.size as i64 + 1
    }
}

fn encode(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("k:{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let p = PageRequest::parse(2, "").unwrap();
        let (items, next) = p.finish(vec!["a", "b", "c"], |s| s.to_string());
        assert_eq!(items, vec!["a", "b"]);
        let p2 = PageRequest::parse(2, &next).unwrap();
        assert_eq!(p2.after.as_deref(), Some("b"));
        assert!(PageRequest::parse(2, "!!").is_err());
        assert!(PageRequest::parse(-1, "").is_err());
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(5000, "").unwrap().size, MAX_PAGE_SIZE);
    }

    #[test]
    fn tokens_around_control_characters_are_refused() {
        for key in ["corp/\0", "a\nb", "\u{7}"] {
            let token = encode(key);
            match PageRequest::parse(1, &token) {
                Err(Error::InvalidArgument(v)) => assert_eq!(v[0].field, "page_token"),
                other => panic!("{key:?}: {other:?}"),
            }
        }
        assert!(PageRequest::parse(1, &encode("corp/laptop")).is_ok());
    }
}
