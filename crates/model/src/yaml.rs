//! Multi-document YAML to JSON values, remembering the line of every field.
//!
//! Written by hand on top of `yaml-rust2`'s event parser because no maintained serde YAML
//! crate exposes source positions after deserialization, and every error we report after
//! decoding (unknown fields, CRD validation) must name the line of the offending field. The
//! loader turns each document into a `serde_json::Value` (resolving plain scalars with the
//! YAML 1.2 core schema, as Kubernetes' YAML decoder does) and records, for each field path
//! such as `spec.listeners[0].hostname`, the 1-based line where it appears.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML document of a file.
#[derive(Debug, Clone)]
pub struct Document {
    /// Line of the document's first node (1-based).
    pub line: usize,
    /// The document's content.
    pub value: Value,
    /// Field path (`a.b[0].c`) to the line it is written on.
    pub lines: HashMap<String, usize>,
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What the parser expected.
    pub message: String,
}

/// Parses every document of `text`. Empty documents (only comments) are skipped.
pub fn load(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut documents = Vec::new();
    for_each_document(text, |document| documents.push(document))?;
    Ok(documents)
}

/// Parses `text` and hands each document to `each` as soon as it is complete, so a file of
/// thousands of documents never holds more than one tree at a time. On a syntax error the
/// documents before it have been handed over already; the caller discards them.
pub fn for_each_document(text: &str, each: impl FnMut(Document)) -> Result<(), SyntaxError> {
    let mut builder = Builder {
        each,
        stack: Vec::new(),
        anchors: HashMap::new(),
        lines: HashMap::new(),
        document_line: None,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|error| SyntaxError {
            line: error.marker().line(),
            column: error.marker().col() + 1,
            message: error.info().to_string(),
        })?;
    match builder.error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

impl Document {
    /// The line of a field path, or of its closest recorded ancestor, or the document's line.
    pub fn line_of(&self, path: &str) -> usize {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return *line;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.line,
            }
        }
    }
}

/// A container being filled while events stream in.
enum Frame {
    Sequence {
        items: Vec<Value>,
        anchor: usize,
    },
    Mapping {
        map: Map<String, Value>,
        pending_key: Option<String>,
        anchor: usize,
    },
}

struct Builder<F> {
    each: F,
    stack: Vec<(Frame, String)>,
    anchors: HashMap<usize, Value>,
    lines: HashMap<String, usize>,
    document_line: Option<usize>,
    error: Option<SyntaxError>,
}

impl<F: FnMut(Document)> Builder<F> {
    /// The path of the node about to be added to the innermost container.
    fn child_path(&self) -> Option<String> {
        let (frame, path) = self.stack.last()?;
        Some(match frame {
            Frame::Sequence { items, .. } => format!("{path}[{}]", items.len()),
            Frame::Mapping {
                pending_key: Some(key),
                ..
            } if path.is_empty() => key.clone(),
            Frame::Mapping {
                pending_key: Some(key),
                ..
            } => format!("{path}.{key}"),
            Frame::Mapping {
                pending_key: None, ..
            } => path.clone(),
        })
    }

    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some((
                Frame::Mapping {
                    pending_key: None,
                    ..
                },
                _
            ))
        )
    }

    fn add(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        let line = mark.line();
        match self.stack.last_mut() {
            None => {
                let lines = std::mem::take(&mut self.lines);
                let doc_line = self.document_line.take().unwrap_or(line);
                if !value.is_null() {
                    (self.each)(Document {
                        line: doc_line,
                        value,
                        lines,
                    });
                }
            }
            Some((Frame::Sequence { items, .. }, path)) => {
                let child = format!("{path}[{}]", items.len());
                self.lines.entry(child).or_insert(line);
                items.push(value);
            }
            Some((
                Frame::Mapping {
                    map, pending_key, ..
                },
                _,
            )) => match pending_key.take() {
                Some(key) => {
                    map.insert(key, value);
                }
                None => {
                    let key = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    *pending_key = Some(key);
                    let path = self.child_path().unwrap_or_default();
                    self.lines.entry(path).or_insert(line);
                }
            },
        }
    }
}

impl<F: FnMut(Document)> MarkedEventReceiver for Builder<F> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match event {
            Event::DocumentStart => {
                self.document_line = None;
                self.anchors.clear();
                self.lines.clear();
            }
            Event::Scalar(text, style, anchor, tag) => {
                if self.stack.is_empty() && self.document_line.is_none() {
                    self.document_line = Some(mark.line());
                }
                let value = if self.expecting_key() {
                    Value::String(text)
                } else {
                    resolve_scalar(text, style, tag.as_ref())
                };
                self.add(value, anchor, mark);
            }
            Event::SequenceStart(anchor, _) => {
                self.enter(
                    Frame::Sequence {
                        items: Vec::new(),
                        anchor,
                    },
                    mark,
                );
            }
            Event::MappingStart(anchor, _) => {
                let frame = Frame::Mapping {
                    map: Map::new(),
                    pending_key: None,
                    anchor,
                };
                self.enter(frame, mark);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((frame, _)) = self.stack.pop() {
                    let (value, anchor) = match frame {
                        Frame::Sequence { items, anchor } => (Value::Array(items), anchor),
                        Frame::Mapping { map, anchor, .. } => (Value::Object(map), anchor),
                    };
                    self.add(value, anchor, mark);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(value) => self.add(value, 0, mark),
                None => {
                    self.error = Some(SyntaxError {
                        line: mark.line(),
                        column: mark.col() + 1,
                        message: "alias to an unknown anchor".into(),
                    });
                }
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

impl<F: FnMut(Document)> Builder<F> {
    fn enter(&mut self, frame: Frame, mark: Marker) {
        if self.stack.is_empty() && self.document_line.is_none() {
            self.document_line = Some(mark.line());
        }
        if self.expecting_key() {
            self.error = Some(SyntaxError {
                line: mark.line(),
                column: mark.col() + 1,
                message: "a mapping key must be a scalar".into(),
            });
            return;
        }
        let path = self.child_path().unwrap_or_default();
        if !path.is_empty() {
            self.lines.entry(path.clone()).or_insert(mark.line());
        }
        self.stack.push((frame, path));
    }
}

/// Resolves a scalar with the YAML 1.2 core schema; quoted and block scalars are strings.
fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag
        && tag.suffix == "str"
    {
        return Value::String(text);
    }
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(number) = parse_int(&text) {
        return Value::Number(number);
    }
    if looks_like_float(&text)
        && let Some(number) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(number);
    }
    Value::String(text)
}

fn parse_int(text: &str) -> Option<Number> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = digits.strip_prefix("0o") {
        (8, octal)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    if let Ok(small) = i64::try_from(value) {
        Some(Number::from(small))
    } else {
        u64::try_from(value).ok().map(Number::from)
    }
}

fn looks_like_float(text: &str) -> bool {
    let body = text.trim_start_matches(['-', '+']);
    !body.is_empty()
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && body.chars().any(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_values_and_lines() {
        let text = "# comment\n---\nkind: Gateway\nspec:\n  listeners:\n  - name: http\n    port: 80\n---\n---\nkind: Service\nmetadata: {name: \"x\", n: 010}\n";
        let docs = load(text).expect("valid yaml");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 3);
        assert_eq!(
            docs[0].value,
            json!({"kind": "Gateway", "spec": {"listeners": [{"name": "http", "port": 80}]}})
        );
        assert_eq!(docs[0].line_of("spec.listeners[0].port"), 7);
        assert_eq!(docs[0].line_of("spec.listeners[0].nope"), 6);
        assert_eq!(docs[1].line, 10);
        assert_eq!(docs[1].value["metadata"]["n"], json!(10));
    }

    #[test]
    fn quoted_scalars_stay_strings_and_anchors_resolve() {
        let docs = load("a: &x '80'\nb: *x\nc: true\nd: \"true\"\ne: 1.5\nf: ~\n").expect("valid");
        assert_eq!(
            docs[0].value,
            json!({"a": "80", "b": "80", "c": true, "d": "true", "e": 1.5, "f": null})
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let error = load("a: b\n  c: d\n").expect_err("bad indentation");
        assert_eq!(error.line, 2);
    }
}
