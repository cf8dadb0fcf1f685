//! Pure text helpers (no host calls), e.g. to fit a long document into LLM-sized pieces.

/// Splits `text` into consecutive chunks of at most `max_chars` bytes each, preferring
/// natural boundaries.
///
/// Each cut, made as late as possible within the limit, is chosen by priority:
///
/// 1. after a paragraph break (a blank line: `\n`, optional spaces/tabs/`\r`, `\n`),
/// 2. after a sentence end (`.`, `!` or `?` followed by whitespace),
/// 3. after any whitespace,
/// 4. at the last UTF-8 character boundary that fits.
///
/// Levels 1 and 2 are used only if they keep at least half of the limit in the chunk, so a
/// paragraph break near the start does not produce a tiny chunk. The chunks are slices of
/// `text`, in order, and cover it entirely except that chunks made only of whitespace are
/// dropped: no chunk is empty, no character is split, and every non-whitespace character
/// is kept in order. `max_chars` counts bytes; values below 4 are raised to 4 so any
/// character fits.
///
/// ```
/// use kiln_plugin::text::split_chunks;
///
/// let text = "First paragraph.\n\nSecond one. Third one.";
/// assert_eq!(split_chunks(text, 24), ["First paragraph.\n\n", "Second one. Third one."]);
/// assert_eq!(split_chunks("One sentence. Another sentence.", 20), ["One sentence. ", "Another sentence."]);
/// ```
pub fn split_chunks(text: &str, max_chars: usize) -> Vec<&str> {
    let max = max_chars.max(4);
    let mut chunks = Vec::with_capacity(text.len() / max + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let cut = if rest.len() <= max {
            rest.len()
        } else {
            cut_point(rest, max)
        };
        let (chunk, tail) = rest.split_at(cut);
        if !chunk.trim().is_empty() {
            chunks.push(chunk);
        }
        rest = tail;
    }
    chunks
}

/// Where to end the next chunk of `rest` (longer than `max`): a position in `1..=max`
/// that is a char boundary.
fn cut_point(rest: &str, max: usize) -> usize {
    let mut end = max;
    while !rest.is_char_boundary(end) {
        end -= 1;
    }
    let window = &rest[..end];
    let half = max / 2;
    if let Some(cut) = paragraph_cut(window).filter(|&c| c >= half) {
        return cut;
    }
    if let Some(cut) = sentence_cut(window).filter(|&c| c >= half) {
        return cut;
    }
    if let Some(cut) = whitespace_cut(window) {
        return cut;
    }
    end
}

/// Just after the last blank line in `window`.
fn paragraph_cut(window: &str) -> Option<usize> {
    let bytes = window.as_bytes();
    (0..bytes.len()).rev().find_map(|j| {
        if bytes[j] != b'\n' {
            return None;
        }
        let mut k = j;
        while k > 0 && matches!(bytes[k - 1], b' ' | b'\t' | b'\r') {
            k -= 1;
        }
        (k > 0 && bytes[k - 1] == b'\n').then_some(j + 1)
    })
}

/// Just after the whitespace that follows the last sentence end in `window`.
fn sentence_cut(window: &str) -> Option<usize> {
    let bytes = window.as_bytes();
    (1..bytes.len()).rev().find_map(|j| {
        (bytes[j].is_ascii_whitespace() && matches!(bytes[j - 1], b'.' | b'!' | b'?'))
            .then_some(j + 1)
    })
}

/// Just after the last whitespace character in `window`, if that is not at its start.
fn whitespace_cut(window: &str) -> Option<usize> {
    window
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace())
        .map(|(i, c)| i + c.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn non_ws(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    /// The invariants every split must satisfy.
    fn check(text: &str, max: usize) -> Vec<&str> {
        let chunks = split_chunks(text, max);
        let limit = max.max(4);
        for chunk in &chunks {
            assert!(chunk.len() <= limit, "chunk of {} > {limit}", chunk.len());
            assert!(!chunk.trim().is_empty(), "empty chunk");
        }
        let joined: String = chunks.concat();
        assert_eq!(non_ws(&joined), non_ws(text), "non-whitespace lost");
        // Chunks are in order and contiguous except for dropped whitespace.
        let mut from = 0;
        for chunk in &chunks {
            let at = chunk.as_ptr() as usize - text.as_ptr() as usize;
            assert!(at >= from && at + chunk.len() <= text.len());
            assert!(text[from..at].trim().is_empty());
            from = at + chunk.len();
        }
        assert!(text[from..].trim().is_empty());
        chunks
    }

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(check("hello world", 100), ["hello world"]);
        assert!(check("", 10).is_empty());
        assert!(check("   \n\n  ", 3).is_empty());
    }

    #[test]
    fn prefers_paragraphs() {
        let a = "Alpha beta gamma. Delta epsilon.";
        let b = "Zeta eta theta. Iota kappa.";
        let text = format!("{a}\n\n{b}\n\n{a}");
        let chunks = check(&text, a.len() + b.len() + 4);
        assert_eq!(chunks[0], format!("{a}\n\n{b}\n\n"));
        assert_eq!(chunks[1], a);
    }

    #[test]
    fn blank_lines_with_spaces_and_crlf_count_as_paragraph_breaks() {
        let text = "One two three four.\r\n \r\nFive six seven.";
        let chunks = check(text, 28);
        assert_eq!(chunks[0], "One two three four.\r\n \r\n");
    }

    #[test]
    fn falls_back_to_sentences() {
        let text = "One sentence here. Another one here! A third? Yes indeed it is.";
        let chunks = check(text, 40);
        assert_eq!(chunks[0], "One sentence here. Another one here! ");
        assert!(chunks.iter().all(|c| c.len() <= 40));
    }

    #[test]
    fn falls_back_to_whitespace_then_chars() {
        let text = "aaaa bbbb cccc dddd";
        assert_eq!(check(text, 12), ["aaaa bbbb ", "cccc dddd"]);
        let text = "abcdefghijklmnop";
        assert_eq!(check(text, 5), ["abcde", "fghij", "klmno", "p"]);
    }

    #[test]
    fn never_splits_a_utf8_character() {
        let text = "ééééé€€€€😀😀😀 日本語のテキスト";
        for max in 1..20 {
            let chunks = check(text, max);
            for c in chunks {
                assert!(c.len() <= max.max(4));
            }
        }
    }

    #[test]
    fn early_paragraph_break_does_not_make_tiny_chunks() {
        let text = format!("Hi.\n\n{}", "word ".repeat(40));
        let chunks = check(&text, 100);
        assert!(chunks[0].len() > 50, "{:?}", chunks[0]);
    }

    #[test]
    fn long_mixed_text_keeps_every_character() {
        let mut text = String::new();
        for i in 0..500 {
            text.push_str(&format!(
                "Sentence number {i} talks about ünïcödé and 日本. "
            ));
            if i % 7 == 0 {
                text.push_str("\n\n");
            }
            if i % 13 == 0 {
                text.push_str(&"x".repeat(i % 90));
            }
        }
        for max in [4, 7, 16, 50, 100, 333, 1000, 6000, 100_000] {
            check(&text, max);
        }
    }

    #[test]
    fn chunks_are_reasonably_full() {
        let text = "lorem ipsum dolor sit amet. ".repeat(1000);
        let chunks = check(&text, 1000);
        // Every chunk but the last keeps at least half the limit.
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 500);
        }
    }
}
