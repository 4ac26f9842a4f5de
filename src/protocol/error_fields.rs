//! Reading the fields of an ErrorResponse or NoticeResponse body, for the few
//! places where the pooler must know what a server said (login, logging).

/// The interesting fields of an ErrorResponse body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    /// Parses the body of an ErrorResponse (without tag and length).
    pub fn parse(mut body: &[u8]) -> ErrorFields {
        let mut out = ErrorFields::default();
        while let Some((&field, rest)) = body.split_first() {
            if field == 0 {
                break;
            }
            let Some((value, rest)) = super::read_cstr(rest) else {
                break;
            };
            match field {
                b'V' => out.severity = value.to_string(),
                b'S' if out.severity.is_empty() => out.severity = value.to_string(),
                b'C' => out.code = value.to_string(),
                b'M' => out.message = value.to_string(),
                _ => {}
            }
            body = rest;
        }
        out
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}
