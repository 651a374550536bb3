//! Typed access to a block's input fields, from a JSON body or from query
//! parameters (where every value is a string), with errors that name the field.

use std::cell::RefCell;
use std::collections::HashSet;

use serde_json::{Map, Value};

/// Why an input was refused, and which field is at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InputError {
    pub field: String,
    pub problem: InputProblem,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputProblem {
    #[error("is required")]
    Missing,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("is not a field of this block")]
    Unknown,
}

impl InputError {
    fn new(field: &str, problem: InputProblem) -> Self {
        Self { field: field.to_owned(), problem }
    }

    /// Oversized fields map to 413, the rest to 422.
    pub fn is_too_large(&self) -> bool {
        matches!(self.problem, InputProblem::TooLong { .. })
    }
}

pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    read: RefCell<HashSet<&'static str>>,
    /// Query parameters: every value is a string, numbers included.
    from_query: bool,
}

impl<'a> Fields<'a> {
    /// Fields of a JSON body: numbers must be JSON numbers.
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Self { map, read: RefCell::default(), from_query: false }
    }

    /// Fields of a query string, where `count=3` arrives as the string `"3"`.
    pub fn from_query(map: &'a Map<String, Value>) -> Self {
        Self { map, read: RefCell::default(), from_query: true }
    }

    fn get(&self, name: &'static str) -> Option<&'a Value> {
        self.read.borrow_mut().insert(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub fn optional_text(&self, name: &'static str, max_chars: usize) -> Result<Option<String>, InputError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => {
                if s.chars().count() > max_chars {
                    return Err(InputError::new(name, InputProblem::TooLong { max: max_chars }));
                }
                Ok(Some(s.clone()))
            }
            Some(_) => Err(InputError::new(name, InputProblem::Invalid("must be a string".into()))),
        }
    }

    /// A required string that is not blank.
    pub fn text(&self, name: &'static str, max_chars: usize) -> Result<String, InputError> {
        match self.optional_text(name, max_chars)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(InputError::new(name, InputProblem::Missing)),
        }
    }

    /// An integer in `min..=max`: a JSON number without a fraction (`3` or `3.0`,
    /// as JSON Schema counts integers), or in a query string, decimal digits.
    pub fn integer(&self, name: &'static str, min: i64, max: i64) -> Result<Option<i64>, InputError> {
        let out_of_range = || InputError::new(name, InputProblem::Invalid(format!("must be an integer from {min} to {max}")));
        let value = match self.get(name) {
            None => return Ok(None),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i,
                (None, Some(f)) if f.fract() == 0.0 && f >= min as f64 && f <= max as f64 => f as i64,
                _ => return Err(out_of_range()),
            },
            Some(Value::String(s)) if self.from_query => {
                let digits = s.strip_prefix('-').unwrap_or(s);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(out_of_range());
                }
                s.parse::<i64>().map_err(|_| out_of_range())?
            }
            Some(_) => return Err(out_of_range()),
        };
        if (min..=max).contains(&value) {
            Ok(Some(value))
        } else {
            Err(out_of_range())
        }
    }

    /// One of `options`, by name.
    pub fn choice<T: Copy>(&self, name: &'static str, options: &[(&str, T)]) -> Result<Option<T>, InputError> {
        let Some(raw) = self.optional_text(name, 64)? else { return Ok(None) };
        options.iter().find(|(n, _)| *n == raw).map(|(_, v)| Some(*v)).ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            InputError::new(name, InputProblem::Invalid(format!("must be one of {}", names.join(", "))))
        })
    }

    /// Fails on the first field no accessor asked for.
    pub fn reject_unknown(&self) -> Result<(), InputError> {
        let read = self.read.borrow();
        match self.map.keys().find(|k| !read.contains(k.as_str())) {
            Some(unknown) => Err(InputError::new(unknown, InputProblem::Unknown)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn text_fields_are_required_non_blank_and_bounded() {
        let m = map(json!({"a": "  ", "b": "hello", "c": 3}));
        let f = Fields::new(&m);
        assert_eq!(f.text("a", 10).unwrap_err().problem, InputProblem::Missing);
        assert_eq!(f.text("missing", 10).unwrap_err().field, "missing");
        assert!(f.text("b", 4).unwrap_err().is_too_large());
        assert_eq!(f.text("b", 5).unwrap(), "hello");
        assert!(matches!(f.text("c", 5).unwrap_err().problem, InputProblem::Invalid(_)));
    }

    #[test]
    fn integers_accept_numbers_and_numeric_strings_within_range() {
        let m = map(json!({"n": 3, "s": "7", "big": 11, "junk": "x", "float": 4.0, "half": 4.5, "padded": " 7"}));
        let f = Fields::from_query(&m);
        assert_eq!(f.integer("n", 1, 10).unwrap(), Some(3));
        assert_eq!(f.integer("s", 1, 10).unwrap(), Some(7));
        assert_eq!(f.integer("float", 1, 10).unwrap(), Some(4));
        assert!(f.integer("half", 1, 10).is_err());
        assert!(f.integer("padded", 1, 10).is_err());
        assert!(Fields::new(&m).integer("s", 1, 10).is_err(), "a JSON body needs a JSON number");
        assert!(f.integer("big", 1, 10).is_err());
        assert!(f.integer("junk", 1, 10).is_err());
        assert_eq!(f.integer("none", 1, 10).unwrap(), None);
    }

    #[test]
    fn choices_name_the_allowed_values() {
        let m = map(json!({"k": "b", "bad": "z"}));
        let f = Fields::new(&m);
        assert_eq!(f.choice("k", &[("a", 1), ("b", 2)]).unwrap(), Some(2));
        let err = f.choice("bad", &[("a", 1), ("b", 2)]).unwrap_err();
        assert_eq!(err.to_string(), "bad: must be one of a, b");
    }
}
