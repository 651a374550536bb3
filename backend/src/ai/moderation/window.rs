//! Cuts streamed output into the windows that are checked: about
//! `MODERATION_WINDOW_CHARS` characters each, cut at a sentence end so a
//! sentence is judged whole (NeMo Guardrails and Azure's streaming filter check
//! in chunks the same way). A window is cut once the text waiting reaches the
//! window size: at the last sentence end past half a window; with none there,
//! the text waits for one up to twice the window, then is cut at the last space
//! (or anywhere, for text without spaces). Whatever is left when the answer
//! ends is the final, partial window.

/// Offsets are bytes of the whole output; sizes count characters.
pub struct Windows {
    /// The output not yet in a window.
    pending: String,
    pending_chars: usize,
    /// Where `pending` starts in the whole output.
    start: usize,
    size: usize,
}

/// A window: the text, and where it ends in the whole output (bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub text: String,
    pub end: usize,
}

impl Windows {
    pub fn new(size: usize) -> Self {
        Self { pending: String::new(), pending_chars: 0, start: 0, size: size.max(2) }
    }

    pub fn push(&mut self, text: &str) {
        self.pending.push_str(text);
        self.pending_chars += text.chars().count();
    }

    /// The next full window, if the text waiting makes one.
    pub fn next_window(&mut self) -> Option<Window> {
        if self.pending_chars < self.size {
            return None;
        }
        let half = self.size / 2;
        let (mut sentence, mut space) = (None, None);
        let mut chars = self.pending.char_indices().peekable();
        let mut count = 0;
        while let Some((at, c)) = chars.next() {
            count += 1;
            let next = chars.peek().map(|(_, n)| *n);
            let after = at + c.len_utf8();
            if count >= half {
                let ends_sentence = c == '\n' || (matches!(c, '.' | '!' | '?' | '…') && next.is_some_and(char::is_whitespace));
                if ends_sentence {
                    // The whitespace after the mark goes with it.
                    let cut = if c == '\n' { after } else { after + next.map_or(0, char::len_utf8) };
                    sentence = Some((cut, count + usize::from(c != '\n')));
                } else if c.is_whitespace() {
                    space = Some((after, count));
                }
            }
        }
        let (cut, chars) = match (sentence, space) {
            (Some(cut), _) => cut,
            _ if self.pending_chars < self.size * 2 => return None,
            (None, Some(cut)) => cut,
            (None, None) => (self.pending.len(), self.pending_chars),
        };
        Some(self.take(cut, chars))
    }

    /// The final window: what is left, if anything.
    pub fn rest(&mut self) -> Option<Window> {
        (!self.pending.is_empty()).then(|| self.take(self.pending.len(), self.pending_chars))
    }

    fn take(&mut self, cut: usize, chars: usize) -> Window {
        let text: String = self.pending.drain(..cut).collect();
        self.pending_chars -= chars;
        self.start += cut;
        Window { text, end: self.start }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(text: &str, size: usize, step: usize) -> Vec<String> {
        let mut windows = Windows::new(size);
        let mut out = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(step) {
            windows.push(&piece.iter().collect::<String>());
            while let Some(window) = windows.next_window() {
                out.push(window.text);
            }
        }
        out.extend(windows.rest().map(|w| w.text));
        out
    }

    #[test]
    fn windows_end_at_sentence_ends() {
        let text = "Volcanoes are mountains. Hot rock called magma rises! Does it erupt? Yes, often.\nThe end.";
        let windows = all(text, 40, 3);
        assert_eq!(windows.concat(), text);
        for window in &windows[..windows.len() - 1] {
            assert!(window.ends_with(". ") || window.ends_with("! ") || window.ends_with("? ") || window.ends_with('\n'), "{window:?}");
        }
        assert!(windows.len() >= 2, "{windows:?}");
    }

    #[test]
    fn text_without_sentence_ends_is_cut_at_a_space_by_twice_the_window() {
        let text = "word ".repeat(40);
        let windows = all(&text, 30, 1);
        assert!(windows.iter().all(|w| w.chars().count() <= 60), "{windows:?}");
        assert!(windows[..windows.len() - 1].iter().all(|w| w.ends_with(' ')));
        assert_eq!(windows.concat(), text);
        let unbroken = "x".repeat(100);
        assert_eq!(all(&unbroken, 30, 7).concat(), unbroken);
    }

    #[test]
    fn a_window_knows_where_it_ends_in_the_output() {
        let mut windows = Windows::new(10);
        let text = "Héllo there. General Kenobi";
        windows.push(text);
        let first = windows.next_window().unwrap();
        assert_eq!((&text[..first.end], first.text.as_str()), ("Héllo there. ", "Héllo there. "));
        assert_eq!(windows.next_window(), None, "the rest is less than a window");
        assert_eq!(windows.rest(), Some(Window { text: "General Kenobi".into(), end: text.len() }));
    }

    proptest! {
        /// Whatever the text and however it arrives: windows are the text in
        /// order, none larger than twice the window plus the last piece pushed.
        #[test]
        fn windows_cover_the_output_exactly_once(text in "[a-zé .!?\n]{0,400}", size in 2usize..80, step in 1usize..9) {
            let windows = all(&text, size, step);
            prop_assert_eq!(windows.concat(), text);
            for window in &windows {
                prop_assert!(window.chars().count() <= size * 2 + step, "{:?}", window);
            }
        }
    }
}
