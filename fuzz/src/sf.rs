//! A strict reader of Structured Field lists (RFC 8941 §4.2), enough to check what sluice
//! writes: items with parameters. Inner lists are refused, as sluice writes none.

/// A bare item (RFC 8941 §3.3).
#[derive(Debug, Clone, PartialEq)]
pub enum Bare {
    Integer(i64),
    Decimal(f64),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Boolean(bool),
}

/// An item and its parameters, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub bare: Bare,
    pub params: Vec<(String, Bare)>,
}

impl Item {
    /// The integer parameter `key`, if the item has one.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.params.iter().find_map(|(k, v)| match v {
            Bare::Integer(n) if k == key => Some(*n),
            _ => None,
        })
    }
}

/// Why a field value is not a list: the byte offset where reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub usize);

/// Reads `value` as a list, whole.
pub fn list(value: &[u8]) -> Result<Vec<Item>, Malformed> {
    let mut r = Reader { s: value, at: 0 };
    r.skip(|b| b == b' ');
    let mut out = Vec::new();
    while r.at < r.s.len() {
        out.push(r.item()?);
        r.skip(|b| b == b' ' || b == b'\t');
        if r.at == r.s.len() {
            return Ok(out);
        }
        r.expect(b',')?;
        r.skip(|b| b == b' ' || b == b'\t');
        if r.at == r.s.len() {
            return Err(r.fail()); // a trailing comma
        }
    }
    Ok(out)
}

struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn fail(&self) -> Malformed {
        Malformed(self.at)
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.at += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Malformed> {
        if self.peek() != Some(b) {
            return Err(self.fail());
        }
        self.at += 1;
        Ok(())
    }

    fn item(&mut self) -> Result<Item, Malformed> {
        let bare = self.bare()?;
        let mut params = Vec::new();
        while self.peek() == Some(b';') {
            self.at += 1;
            self.skip(|b| b == b' ');
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.at += 1;
                self.bare()?
            } else {
                Bare::Boolean(true)
            };
            params.push((key, value));
        }
        Ok(Item { bare, params })
    }

    fn key(&mut self) -> Result<String, Malformed> {
        let start = self.at;
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.at += 1,
            _ => return Err(self.fail()),
        }
        self.skip(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'));
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn bare(&mut self) -> Result<Bare, Malformed> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b'*' | b'a'..=b'z' | b'A'..=b'Z') => Ok(self.token()),
            Some(b':') => self.bytes(),
            Some(b'?') => self.boolean(),
            _ => Err(self.fail()),
        }
    }

    fn number(&mut self) -> Result<Bare, Malformed> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let start = self.at;
        self.skip(|b| b.is_ascii_digit());
        let int_digits = self.at - start;
        if int_digits == 0 {
            return Err(self.fail());
        }
        let text =
            |from: usize, to: usize, s: &[u8]| String::from_utf8_lossy(&s[from..to]).into_owned();
        if self.peek() != Some(b'.') {
            // At most 15 digits (§3.3.1).
            if int_digits > 15 {
                return Err(self.fail());
            }
            let n: i64 = text(start, self.at, self.s)
                .parse()
                .map_err(|_| self.fail())?;
            return Ok(Bare::Integer(if negative { -n } else { n }));
        }
        self.at += 1;
        let frac = self.at;
        self.skip(|b| b.is_ascii_digit());
        // At most 12 digits before the point and 3 after, at least one after (§3.3.2).
        if int_digits > 12 || self.at == frac || self.at - frac > 3 {
            return Err(self.fail());
        }
        let d: f64 = text(start, self.at, self.s)
            .parse()
            .map_err(|_| self.fail())?;
        Ok(Bare::Decimal(if negative { -d } else { d }))
    }

    fn string(&mut self) -> Result<Bare, Malformed> {
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.fail()),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(Bare::String(out));
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => out.push(char::from(c)),
                        _ => return Err(self.fail()),
                    }
                }
                Some(c @ 0x20..=0x7e) => out.push(char::from(c)),
                Some(_) => return Err(self.fail()),
            }
            self.at += 1;
        }
    }

    fn token(&mut self) -> Bare {
        let start = self.at;
        self.at += 1;
        self.skip(|b| is_tchar(b) || b == b':' || b == b'/');
        Bare::Token(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn bytes(&mut self) -> Result<Bare, Malformed> {
        self.at += 1;
        let start = self.at;
        self.skip(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        let raw = self.s[start..self.at].to_vec();
        self.expect(b':')?;
        Ok(Bare::Bytes(raw))
    }

    fn boolean(&mut self) -> Result<Bare, Malformed> {
        self.at += 1;
        let value = match self.peek() {
            Some(b'1') => true,
            Some(b'0') => false,
            _ => return Err(self.fail()),
        };
        self.at += 1;
        Ok(Bare::Boolean(value))
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_sluice_writes_reads_back() {
        let items = list(br#""default";q=100;w=60, "default.rate";q=100;w=100"#).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].bare, Bare::String("default".into()));
        assert_eq!(items[1].int("w"), Some(100));
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in [
            &b"\"a\","[..],
            b"\"a\";Q=1",
            b"\"a",
            b"\"a\\x\"",
            b"1234567890123456",
            b"\"a\";r=",
            b"(1 2)",
        ] {
            assert!(list(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
