//! POP selectors: the CEL subset that chooses nodes by their labels, e.g.
//! `region == 'tokyo' && tier != 'canary'`.
//!
//! Grammar (CEL syntax; anything else is refused with its position):
//!
//! ```text
//! expr    := or
//! or      := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" expr ")" | "true" | "false" | "has(" label ")"
//!          | label ( "==" | "!=" ) string
//!          | label "in" "[" string ( "," string )* "]"
//! label   := identifier | "labels." identifier | "labels[" string "]"
//! string  := '...' or "..." (with \\ \' \" escapes)
//! ```
//!
//! A missing label compares unequal to every string. Parsing never panics: inputs are
//! limited to [`MAX_LEN`] bytes and nesting to [`MAX_DEPTH`].

use std::collections::BTreeMap;
use std::fmt;

/// Longest selector accepted.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses and `!`.
pub const MAX_DEPTH: usize = 64;

/// A parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Bool(bool),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    Has(String),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// Why a selector was refused, with the 0-based byte position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at position {position}: {message}")]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl Selector {
    /// Parses a selector; an empty one (only white space) selects every node.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_LEN {
            return Err(SelectorError {
                position: MAX_LEN,
                message: format!("longer than {MAX_LEN} bytes"),
            });
        }
        let mut parser = Parser {
            text,
            pos: 0,
            depth: 0,
        };
        parser.skip_space();
        if parser.pos == text.len() {
            return Ok(Self::Bool(true));
        }
        let selector = parser.or()?;
        parser.skip_space();
        if parser.pos != text.len() {
            return Err(parser.error("unexpected text after the expression"));
        }
        Ok(selector)
    }

    /// Whether a node with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Bool(b) => *b,
            Self::Eq(label, value) => labels.get(label) == Some(value),
            Self::Ne(label, value) => labels.get(label) != Some(value),
            Self::In(label, values) => labels.get(label).is_some_and(|v| values.contains(v)),
            Self::Has(label) => labels.contains_key(label),
            Self::Not(inner) => !inner.matches(labels),
            Self::And(a, b) => a.matches(labels) && b.matches(labels),
            Self::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl fmt::Display for Selector {
    /// The canonical text, which parses back to the same selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Eq(l, v) => write!(f, "labels[{}] == {}", quote(l), quote(v)),
            Self::Ne(l, v) => write!(f, "labels[{}] != {}", quote(l), quote(v)),
            Self::In(l, vs) => {
                let list: Vec<String> = vs.iter().map(|v| quote(v)).collect();
                write!(f, "labels[{}] in [{}]", quote(l), list.join(", "))
            }
            Self::Has(l) => write!(f, "has(labels[{}])", quote(l)),
            Self::Not(inner) => write!(f, "!({inner})"),
            Self::And(a, b) => write!(f, "({a}) && ({b})"),
            Self::Or(a, b) => write!(f, "({a}) || ({b})"),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> SelectorError {
        SelectorError {
            position: self.pos,
            message: message.to_string(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), SelectorError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{token}`")))
        }
    }

    fn nested<T>(
        &mut self,
        inner: impl FnOnce(&mut Self) -> Result<T, SelectorError>,
    ) -> Result<T, SelectorError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(&format!("nested deeper than {MAX_DEPTH}")));
        }
        self.depth += 1;
        let result = inner(self);
        self.depth -= 1;
        result
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_space();
        if self.rest().starts_with("!=") {
            return Err(self.error("expected an expression"));
        }
        if self.eat("!") {
            return self.nested(|p| Ok(Selector::Not(Box::new(p.unary()?))));
        }
        self.primary()
    }

    fn identifier(&mut self) -> Option<&str> {
        self.skip_space();
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_alphanumeric() || *c == '_' || (*i > 0 && (*c == '-' || *c == '.')))
            })
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 || rest.as_bytes()[0].is_ascii_digit() {
            return None;
        }
        let start = self.pos;
        self.pos += len;
        Some(&self.text[start..start + len])
    }

    fn primary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_space();
        if self.eat("(") {
            let inner = self.nested(|p| p.or())?;
            self.expect(")")?;
            return Ok(inner);
        }
        if self.rest().starts_with("has(") {
            self.pos += 4;
            let label = self.label()?;
            self.expect(")")?;
            return Ok(Selector::Has(label));
        }
        let start = self.pos;
        let label = self.label()?;
        if label == "true" || label == "false" {
            return Ok(Selector::Bool(label == "true"));
        }
        if self.eat("==") {
            return Ok(Selector::Eq(label, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(label, self.string()?));
        }
        self.skip_space();
        if self.rest().starts_with("in")
            && !self.rest()[2..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += 2;
            self.expect("[")?;
            let mut values = vec![self.string()?];
            while self.eat(",") {
                values.push(self.string()?);
            }
            self.expect("]")?;
            return Ok(Selector::In(label, values));
        }
        let _ = start;
        Err(self.error("expected `==`, `!=` or `in` after a label"))
    }

    /// `name`, `labels.name` or `labels['name']`.
    fn label(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        if self.rest().starts_with("labels[") {
            self.pos += 7;
            let name = self.string()?;
            self.expect("]")?;
            return Ok(name);
        }
        let Some(name) = self.identifier() else {
            return Err(self.error("expected a label name"));
        };
        Ok(name.strip_prefix("labels.").unwrap_or(name).to_string())
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped @ ('\\' | '\'' | '"'))) => value.push(escaped),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    _ => {
                        self.pos += offset;
                        return Err(self.error("unknown escape in string"));
                    }
                },
                c if c == quote => {
                    self.pos += offset + 1;
                    return Ok(value);
                }
                c => value.push(c),
            }
        }
        self.pos = start;
        Err(self.error("unterminated string"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selects_by_labels() {
        let tokyo = labels(&[("region", "tokyo"), ("tier", "prod")]);
        let canary = labels(&[("region", "tokyo"), ("tier", "canary")]);
        let osaka = labels(&[("region", "osaka")]);
        let cases = [
            (
                "region == 'tokyo' && tier != 'canary'",
                [true, false, false],
            ),
            ("region == \"tokyo\"", [true, true, false]),
            ("labels.region in ['osaka', 'kyoto']", [false, false, true]),
            (
                "labels['tier'] == 'canary' || !has(tier)",
                [false, true, true],
            ),
            ("!(region == 'tokyo')", [false, false, true]),
            ("", [true, true, true]),
            ("true && (false || region != 'nowhere')", [true, true, true]),
        ];
        for (text, expected) in cases {
            let selector = Selector::parse(text).unwrap();
            let got = [&tokyo, &canary, &osaka].map(|l| selector.matches(l));
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn errors_carry_the_position() {
        let cases = [
            ("region == ", 10),
            ("region = 'x'", 7),
            ("region == 'tokyo", 10),
            ("(region == 'a'", 14),
            ("region == 'a' &&", 16),
            ("region == 'a' garbage", 14),
            ("'x' == region", 0),
            ("region == 'a\\q'", 12),
            ("region in []", 11),
        ];
        for (text, position) in cases {
            let error = Selector::parse(text).unwrap_err();
            assert_eq!(error.position, position, "{text}: {error}");
        }
    }

    #[test]
    fn limits_hold() {
        assert!(Selector::parse(&"a == 'b' || ".repeat(1000)).is_err());
        let deep = format!("{}a == 'b'{}", "(".repeat(100), ")".repeat(100));
        assert!(
            Selector::parse(&deep)
                .unwrap_err()
                .message
                .contains("nested")
        );
        assert!(Selector::parse(&"!".repeat(1000)).is_err());
    }

    fn arb_selector() -> impl Strategy<Value = Selector> {
        let label = "[a-z][a-z0-9_-]{0,6}";
        let value = "[ -~]{0,6}";
        let leaf = prop_oneof![
            any::<bool>().prop_map(Selector::Bool),
            (label, value).prop_map(|(l, v)| Selector::Eq(l, v)),
            (label, value).prop_map(|(l, v)| Selector::Ne(l, v)),
            (label, proptest::collection::vec(value, 1..4)).prop_map(|(l, vs)| Selector::In(l, vs)),
            label.prop_map(Selector::Has),
        ];
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Selector::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Selector::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// No input panics, and every error's position lies within the input.
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~]{0,80}") {
            if let Err(error) = Selector::parse(&text) {
                prop_assert!(error.position <= text.len());
            }
        }

        /// Token soup built from the grammar's own pieces never panics either.
        #[test]
        fn token_soup_never_panics(tokens in proptest::collection::vec(prop::sample::select(vec![
            "region", "labels.", "labels[", "has(", "in", "[", "]", "(", ")", "!", "!=", "==", "&&", "||",
            "'a'", "\"b\"", "'\\\\", "'", "\"", ",", " ", "true", "\\q", "é",
        ]), 0..30)) {
            let text = tokens.concat();
            if let Err(error) = Selector::parse(&text) {
                prop_assert!(error.position <= text.len());
            }
        }

        /// The canonical text of a selector parses back to the same selector.
        #[test]
        fn display_round_trips(selector in arb_selector()) {
            let text = selector.to_string();
            prop_assert_eq!(Selector::parse(&text).unwrap(), selector, "{}", text);
        }
    }
}
