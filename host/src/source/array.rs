//! PostgreSQL's array text (`{1,NULL,"a \"b\""}`) read into JSON arrays: one
//! place for the initial copy and the stream, which both receive arrays as text.

use serde_json::value::RawValue;

use crate::catalog::ArrayElement;

/// The JSON text of an array as PostgreSQL prints it: nested arrays for more
/// than one dimension, unquoted `NULL` as JSON null, lower bounds (`[0:1]=`) dropped.
pub fn to_json(text: &str, element: ArrayElement) -> Result<String, String> {
    let mut body = text.trim_start();
    // Explicit bounds, `[0:1][1:2]={...}`: PostgreSQL prints them only when a lower bound is not 1.
    if body.starts_with('[') {
        body = body
            .split_once('=')
            .map(|(_, b)| b)
            .ok_or_else(|| format!("array '{text}' has dimensions but no '='"))?;
    }
    let mut parser = Parser {
        chars: body.trim_start().char_indices().peekable(),
        out: String::with_capacity(text.len() + 8),
        element,
    };
    parser
        .array()
        .map_err(|why| format!("cannot read array '{text}': {why}"))?;
    if let Some((_, c)) = parser.chars.find(|(_, c)| !c.is_whitespace()) {
        return Err(format!("cannot read array '{text}': '{c}' after its closing brace"));
    }
    Ok(parser.out)
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    out: String,
    element: ArrayElement,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    /// One `{...}`, possibly holding arrays.
    fn array(&mut self) -> Result<(), String> {
        if self.chars.next().map(|(_, c)| c) != Some('{') {
            return Err("an array starts with '{'".into());
        }
        self.out.push('[');
        self.skip_space();
        if self.chars.next_if(|(_, c)| *c == '}').is_some() {
            self.out.push(']');
            return Ok(());
        }
        loop {
            self.skip_space();
            if self.chars.peek().map(|(_, c)| *c) == Some('{') {
                self.array()?;
            } else {
                self.element()?;
            }
            self.skip_space();
            match self.chars.next().map(|(_, c)| c) {
                Some(',') => self.out.push(','),
                Some('}') => {
                    self.out.push(']');
                    return Ok(());
                }
                Some(c) => return Err(format!("'{c}' where ',' or '}}' belongs")),
                None => return Err("it ends before its closing brace".into()),
            }
        }
    }

    /// One element, quoted or not, written as JSON.
    fn element(&mut self) -> Result<(), String> {
        let mut text = String::new();
        // Only a bare, unescaped NULL is a null element; "NULL" is a string.
        let mut literal = false;
        if self.chars.next_if(|(_, c)| *c == '"').is_some() {
            literal = true;
            loop {
                match self.chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => text.push(self.escaped()?),
                    Some(c) => text.push(c),
                    None => return Err("a quoted element is not closed".into()),
                }
            }
        } else {
            while let Some((_, c)) = self.chars.next_if(|(_, c)| !matches!(c, ',' | '}' | '{' | '"')) {
                if c == '\\' {
                    literal = true;
                    text.push(self.escaped()?);
                } else {
                    text.push(c);
                }
            }
            // Whitespace around an unquoted element is not part of it.
            text.truncate(text.trim_end().len());
            if text.is_empty() {
                return Err("an element is empty".into());
            }
        }
        if !literal && text.eq_ignore_ascii_case("NULL") {
            self.out.push_str("null");
            return Ok(());
        }
        match self.element {
            ArrayElement::Number if is_json_number(&text) => self.out.push_str(&text),
            ArrayElement::Bool => match text.as_str() {
                "t" | "true" => self.out.push_str("true"),
                "f" | "false" => self.out.push_str("false"),
                _ => return Err(format!("'{text}' is not a boolean")),
            },
            ArrayElement::Json => {
                let raw: Box<RawValue> =
                    serde_json::from_str(&text).map_err(|e| format!("element '{text}' is not JSON: {e}"))?;
                self.out.push_str(raw.get());
            }
            // Numbers JSON cannot write (NaN, Infinity) become strings, as PostgreSQL's to_json writes them.
            ArrayElement::Number | ArrayElement::Text | ArrayElement::Temporal => {
                self.out
                    .push_str(&serde_json::to_string(&text).map_err(|e| e.to_string())?);
            }
        }
        Ok(())
    }

    fn escaped(&mut self) -> Result<char, String> {
        self.chars
            .next()
            .map(|(_, c)| c)
            .ok_or_else(|| "it ends with a backslash".to_owned())
    }
}

/// Whether the text is a number in JSON's grammar, which PostgreSQL's numbers
/// follow except NaN and ±Infinity.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str, element: ArrayElement) -> String {
        to_json(text, element).expect("readable")
    }

    #[test]
    fn reads_numbers_and_booleans() {
        assert_eq!(
            json("{1,NULL,-2147483648}", ArrayElement::Number),
            "[1,null,-2147483648]"
        );
        assert_eq!(
            json("{1.50,NaN,Infinity,-Infinity,1e+300,-0}", ArrayElement::Number),
            r#"[1.50,"NaN","Infinity","-Infinity",1e+300,-0]"#
        );
        assert_eq!(json("{t,f,NULL}", ArrayElement::Bool), "[true,false,null]");
        assert_eq!(json("{}", ArrayElement::Number), "[]");
        assert_eq!(json("{{1,2},{3,4}}", ArrayElement::Number), "[[1,2],[3,4]]");
        assert_eq!(json("{{{1}},{{2}}}", ArrayElement::Number), "[[[1]],[[2]]]");
        assert_eq!(json("[0:1]={1,2}", ArrayElement::Number), "[1,2]");
        assert_eq!(json("[0:1][2:3]={{1,2},{3,4}}", ArrayElement::Number), "[[1,2],[3,4]]");
    }

    #[test]
    fn reads_quoted_text() {
        let text = r#"{plain,NULL,"NULL","null","a \"q\" b","back\\slash","x,y","{br}","",' ',"  lead",ünï😀}"#;
        let got: serde_json::Value = serde_json::from_str(&json(text, ArrayElement::Text)).expect("json");
        assert_eq!(
            got,
            serde_json::json!([
                "plain",
                null,
                "NULL",
                "null",
                "a \"q\" b",
                "back\\slash",
                "x,y",
                "{br}",
                "",
                "' '",
                "  lead",
                "ünï😀"
            ])
        );
        assert_eq!(json(r#"{a\,b, c }"#, ArrayElement::Text), r#"["a,b","c"]"#);
        assert_eq!(json(r#"{N\ULL}"#, ArrayElement::Text), r#"["NULL"]"#);
        assert_eq!(
            json(r#"{"2024-01-01 10:00:00+00"}"#, ArrayElement::Temporal),
            r#"["2024-01-01 10:00:00+00"]"#
        );
        assert_eq!(
            json(r#"{"{\"a\": [1, 2.50]}",NULL,"\"s\""}"#, ArrayElement::Json),
            r#"[{"a": [1, 2.50]},null,"s"]"#
        );
    }

    #[test]
    fn refuses_what_is_not_an_array() {
        for bad in ["", "1,2", "{1,2", "{1,,2}", "{1}x", "{\"open}", "[0:1]{1}", "{1\\"] {
            assert!(to_json(bad, ArrayElement::Number).is_err(), "{bad}");
        }
        assert!(to_json("{maybe}", ArrayElement::Bool).is_err());
        assert!(to_json("{not json}", ArrayElement::Json).is_err());
    }

    #[test]
    fn knows_json_numbers() {
        for good in ["0", "-0", "1.5", "12e3", "1E-7", "-1.0e+10"] {
            assert!(is_json_number(good), "{good}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "NaN", "Infinity", "+1", "1 "] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
