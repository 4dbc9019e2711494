//! Answers that list messages come in pages: [`PageBudget`] fills a page while the encoded
//! entries fit one API frame, and a cursor names where a page ends, so that the next
//! request starts there. A cursor is opaque to clients: they pass it back as given.

use serde::Serialize;

use super::ApiError;
use crate::ids::MessageId;

/// Bytes of a frame kept for everything around a page's entries: the reply's id and tags,
/// the list's length, the counts and the cursors.
pub const PAGE_SLACK: usize = 512;

/// The postcard size of a value, as it goes into a frame.
pub fn encoded_len<T: Serialize>(v: &T) -> usize {
    postcard::experimental::serialized_size(v).unwrap_or(usize::MAX)
}

/// Fills one page: entries go in, in order, while their encoded sizes fit.
#[derive(Clone, Copy, Debug)]
pub struct PageBudget {
    /// Room for the entries of a page in one frame.
    frame: usize,
    /// Room for the entries asked for (`max_bytes`), at most `frame`.
    wanted: usize,
    /// Most entries in a page.
    max_entries: usize,
    used: usize,
    taken: usize,
}

impl PageBudget {
    /// A budget for an answer in frames of `max_frame` bytes, filled up to `max_bytes`
    /// (`None`: the frame) and `max_entries` entries.
    pub fn new(max_frame: usize, max_bytes: Option<u32>, max_entries: usize) -> Self {
        let frame = max_frame.saturating_sub(PAGE_SLACK);
        Self {
            frame,
            wanted: max_bytes.map_or(frame, |b| (b as usize).min(frame)),
            max_entries,
            used: 0,
            taken: 0,
        }
    }

    /// Whether an entry of `size` encoded bytes goes into the page (it is then counted).
    /// The first entry goes in whenever it fits a frame, even over `max_bytes`: a page is
    /// never empty because of its own budget.
    pub fn admit(&mut self, size: usize) -> bool {
        let room = if self.taken == 0 { self.frame } else { self.wanted };
        if self.taken >= self.max_entries || self.used.saturating_add(size) > room {
            return false;
        }
        self.used += size;
        self.taken += 1;
        true
    }

    /// Entries taken so far.
    pub fn taken(&self) -> usize {
        self.taken
    }
}

/// The views of a page being filled: each entry's view is built once, measured, and kept
/// if it fits, so the answer carries exactly what was measured.
#[derive(Debug)]
pub struct PageFill<V> {
    budget: PageBudget,
    views: Vec<V>,
    /// The first entry, when no frame holds it: its message id and encoded size.
    refused: Option<(MessageId, usize)>,
}

impl<V: Serialize> PageFill<V> {
    /// An empty page filled within `budget`.
    pub fn new(budget: PageBudget) -> Self {
        Self {
            budget,
            views: Vec::new(),
            refused: None,
        }
    }

    /// Takes the view of message `id` if it fits; `false` ends the page before it.
    pub fn offer(&mut self, id: MessageId, view: V) -> bool {
        let size = encoded_len(&view);
        if self.budget.admit(size) {
            self.views.push(view);
            return true;
        }
        if self.budget.taken() == 0 {
            self.refused = Some((id, size));
        }
        false
    }

    /// The views taken, in order; [`EntryTooLarge`] when the first entry fits no frame
    /// (possible only for a message stored while the limits were larger).
    pub fn finish(self) -> Result<Vec<V>, EntryTooLarge> {
        match self.refused {
            Some((id, size)) if self.views.is_empty() => Err(EntryTooLarge {
                id,
                size,
                limit: self.budget.frame + PAGE_SLACK,
            }),
            _ => Ok(self.views),
        }
    }
}

/// The first entry of a page fits no answer of the local API.
#[derive(Debug, thiserror::Error)]
#[error(
    "message {id} is {size} bytes encoded, more than one answer of the local API holds ({limit} bytes); raise limits.max_api_frame_bytes in the daemon's config.toml to read it"
)]
pub struct EntryTooLarge {
    /// The entry.
    pub id: MessageId,
    /// Its encoded size.
    pub size: usize,
    /// What an answer holds.
    pub limit: usize,
}

const INBOX: &str = "i";
const HISTORY: &str = "h";

/// The cursor after the inbox entry recorded under `seq`.
pub fn inbox_cursor(seq: u64) -> String {
    format!("{INBOX}{seq}")
}

/// The cursor at the history entry recorded under `seq`.
pub fn history_cursor(seq: u64) -> String {
    format!("{HISTORY}{seq}")
}

/// The position an inbox cursor names.
pub fn parse_inbox_cursor(s: &str) -> Result<u64, ApiError> {
    parse(s, INBOX, "inbox")
}

/// The position a history cursor names.
pub fn parse_history_cursor(s: &str) -> Result<u64, ApiError> {
    parse(s, HISTORY, "history")
}

fn parse(s: &str, tag: &str, what: &str) -> Result<u64, ApiError> {
    s.strip_prefix(tag)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            ApiError::bad(format!(
                "bad {what} cursor \"{}\": give a cursor exactly as an earlier {what} answer returned it (like {tag}1234)",
                crate::text::field(s, 40)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_fills_up_to_its_budget_and_never_starts_empty() {
        let mut b = PageBudget::new(1000 + PAGE_SLACK, Some(300), 10);
        assert!(b.admit(800), "the first entry fits the frame, over max_bytes");
        assert!(!b.admit(1), "then max_bytes holds");
        let mut b = PageBudget::new(1000 + PAGE_SLACK, None, 10);
        assert!(!b.admit(1001), "no frame holds it");
        assert_eq!(b.taken(), 0);
        assert!(b.admit(600) && b.admit(400) && !b.admit(1));
        assert_eq!(b.taken(), 2);
        let mut b = PageBudget::new(1 << 20, None, 2);
        assert!(b.admit(1) && b.admit(1) && !b.admit(1), "at most max_entries");
    }

    #[test]
    fn a_fill_keeps_what_fits_and_names_a_first_entry_no_frame_holds() {
        let (a, b) = (MessageId::new(), MessageId::new());
        let mut fill = PageFill::new(PageBudget::new(PAGE_SLACK + 20, None, 10));
        assert!(fill.offer(a, "x".repeat(10)));
        assert!(!fill.offer(b, "y".repeat(10)), "11 + 11 bytes do not fit 20");
        assert_eq!(fill.finish().unwrap(), ["x".repeat(10)]);
        let mut fill = PageFill::new(PageBudget::new(PAGE_SLACK + 20, None, 10));
        assert!(!fill.offer(a, "z".repeat(30)));
        let e = fill.finish().unwrap_err().to_string();
        assert!(e.contains(&a.to_string()) && e.contains("31 bytes"), "{e}");
    }

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused_with_a_reason() {
        assert_eq!(parse_inbox_cursor(&inbox_cursor(42)).unwrap(), 42);
        assert_eq!(parse_history_cursor(&history_cursor(u64::MAX)).unwrap(), u64::MAX);
        for bad in [
            "",
            "h",
            "42",
            "i42",
            "h-1",
            "h+1",
            "h 1",
            "h1x",
            "h99999999999999999999",
        ] {
            let e = parse_history_cursor(bad).unwrap_err();
            assert_eq!(e.code, super::super::ErrorCode::BadRequest, "{bad}");
            assert!(e.message.contains("bad history cursor"), "{}", e.message);
        }
        assert!(
            parse_inbox_cursor("h42").is_err(),
            "a history cursor is not an inbox one"
        );
    }
}
