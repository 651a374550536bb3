//! Finds the items of a JSON array while the JSON is still arriving.
//!
//! The quiz streams `{"questions":[{…},{…}]}` token by token; to send each question
//! as soon as it is complete, this scanner tracks string/escape state and nesting
//! depth and yields the source text of each object directly inside the first array
//! it sees. It does not validate JSON: each yielded item is parsed by serde, and the
//! whole text is parsed again at the end.

#[derive(Debug, Default)]
pub struct ArrayItemScanner {
    buf: String,
    in_string: bool,
    escaped: bool,
    depth: usize,
    /// Depth inside the first array; items open at exactly this depth.
    array_depth: Option<usize>,
    item_start: Option<usize>,
    array_closed: bool,
}

impl ArrayItemScanner {
    /// Feeds more text; returns the items it completed, in order.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        let mut items = Vec::new();
        let offset = self.buf.len();
        self.buf.push_str(text);
        for (i, c) in text.char_indices() {
            let at = offset + i;
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '[' | '{' => {
                    self.depth += 1;
                    if c == '[' && self.array_depth.is_none() && !self.array_closed {
                        self.array_depth = Some(self.depth);
                    } else if c == '{' && self.array_depth.is_some_and(|d| self.depth == d + 1) {
                        self.item_start = Some(at);
                    }
                }
                ']' | '}' => {
                    if c == '}' && self.array_depth.is_some_and(|d| self.depth == d + 1) {
                        if let Some(start) = self.item_start.take() {
                            items.push(self.buf[start..=at].to_owned());
                        }
                    }
                    if c == ']' && self.array_depth == Some(self.depth) {
                        self.array_depth = None;
                        self.array_closed = true;
                    }
                    self.depth = self.depth.saturating_sub(1);
                }
                _ => {}
            }
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(text: &str, piece: usize) -> Vec<String> {
        let mut scanner = ArrayItemScanner::default();
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(piece).flat_map(|c| scanner.push(&c.iter().collect::<String>())).collect()
    }

    #[test]
    fn items_are_found_however_the_text_is_split() {
        let text = r#"{"questions":[{"q":"a [x] {y}","c":["1","2"]},{"q":"say \"}\""}]}"#;
        for piece in 1..=text.len() {
            let items = scan_in_pieces(text, piece);
            assert_eq!(items, vec![r#"{"q":"a [x] {y}","c":["1","2"]}"#, r#"{"q":"say \"}\""}"#], "piece {piece}");
        }
    }

    #[test]
    fn a_bare_array_and_surrounding_prose_work() {
        let items = scan_in_pieces("Here you go:\n```json\n[{\"a\":1}, {\"b\":[{}]}]\n```", 3);
        assert_eq!(items, vec![r#"{"a":1}"#, r#"{"b":[{}]}"#]);
    }

    #[test]
    fn only_the_first_array_yields_items() {
        let items = scan_in_pieces(r#"[{"a":1}] [{"b":2}]"#, 4);
        assert_eq!(items, vec![r#"{"a":1}"#]);
    }
}
