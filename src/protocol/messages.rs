//! Builders for the messages the pooler writes itself. pgwire's message types do
//! the encoding; these helpers only pick the fields.

use bytes::{BufMut, BytesMut};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

/// SQLSTATE codes the pooler answers with, named as in the PostgreSQL docs.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
}

/// Severity of an error the pooler reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse.
pub fn error(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let sev = severity.as_str().to_string();
    let msg = ErrorResponse::new(vec![
        (b'S', sev.clone()),
        (b'V', sev),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ]);
    encode(msg, buf);
}

/// Appends a NoticeResponse (severity NOTICE).
pub fn notice(buf: &mut BytesMut, message: &str) {
    use pgwire::messages::response::NoticeResponse;
    let msg = NoticeResponse::new(vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', message.to_string()),
    ]);
    encode(msg, buf);
}

/// The ErrorResponse PostgreSQL sends when a statement's cached plan would
/// change its result type; drivers (pgjdbc, asyncpg) re-prepare on it, and
/// pgjdbc recognises it by its routine.
pub fn plan_changed_error(buf: &mut BytesMut) {
    let msg = ErrorResponse::new(vec![
        (b'S', "ERROR".to_string()),
        (b'V', "ERROR".to_string()),
        (b'C', "0A000".to_string()),
        (b'M', "cached plan must not change result type".to_string()),
        (b'R', "RevalidateCachedQuery".to_string()),
    ]);
    encode(msg, buf);
}

/// Appends a ReadyForQuery with the given status byte (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(ReadyForQuery::new(status), buf);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    encode(
        ParameterStatus::new(name.to_string(), value.to_string()),
        buf,
    );
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    encode(BackendKeyData::new(pid, SecretKey::I32(secret)), buf);
}

pub fn auth_ok(buf: &mut BytesMut) {
    encode(Authentication::Ok, buf);
}

pub fn auth_cleartext(buf: &mut BytesMut) {
    encode(Authentication::CleartextPassword, buf);
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    encode(Authentication::MD5Password(salt.to_vec()), buf);
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let mechs = mechanisms.iter().map(|m| m.to_string()).collect();
    encode(Authentication::SASL(mechs), buf);
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    encode(
        Authentication::SASLContinue(bytes::Bytes::copy_from_slice(data)),
        buf,
    );
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    encode(
        Authentication::SASLFinal(bytes::Bytes::copy_from_slice(data)),
        buf,
    );
}

/// NegotiateProtocolVersion: the newest minor version we speak (0) and the
/// `_pq_.` options we did not recognise.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported: Vec<String>) {
    encode(NegotiateProtocolVersion::new(0, unsupported), buf);
}

/// Appends a simple Query message.
pub fn query(buf: &mut BytesMut, sql: &str) {
    buf.put_u8(b'Q');
    buf.put_u32((sql.len() + 5) as u32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

/// Appends a CommandComplete with the given tag (e.g. `SET`).
pub fn command_complete(buf: &mut BytesMut, command_tag: &str) {
    buf.put_u8(b'C');
    buf.put_u32((command_tag.len() + 5) as u32);
    buf.put_slice(command_tag.as_bytes());
    buf.put_u8(0);
}

/// Appends a Terminate message.
pub fn terminate(buf: &mut BytesMut) {
    buf.put_u8(b'X');
    buf.put_u32(4);
}

/// Type OIDs of the columns the admin console returns.
pub mod oid {
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
    pub const NUMERIC: u32 = 1700;
}

/// Appends a RowDescription of text-format columns.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    use pgwire::messages::data::{FieldDescription, RowDescription};
    let fields = columns
        .iter()
        .map(|(name, type_id)| {
            let size = if *type_id == oid::INT8 { 8 } else { -1 };
            FieldDescription::new(name.to_string(), 0, 0, *type_id, size, -1, 0)
        })
        .collect();
    encode(RowDescription::new(fields), buf);
}

/// Appends a DataRow of text values (`None` is NULL).
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    use pgwire::messages::data::DataRow;
    let mut data = BytesMut::new();
    for v in values {
        match v {
            Some(v) => {
                data.put_i32(v.len() as i32);
                data.put_slice(v.as_bytes());
            }
            None => data.put_i32(-1),
        }
    }
    encode(DataRow::new(data, values.len() as i16), buf);
}

fn encode<M: Message>(msg: M, buf: &mut BytesMut) {
    // Encoding only fails when a message exceeds pgwire's size limit; the
    // messages built here are small and bounded by what we put in them.
    if let Err(e) = msg.encode(buf) {
        tracing::error!("could not encode a generated message: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let mut buf = BytesMut::new();
        error(&mut buf, Severity::Fatal, "3D000", "no such database");
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("C3D000"));
        assert!(text.contains("SFATAL"));
    }

    #[test]
    fn ready_for_query_layout() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, b'T');
        assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, b'T']);
    }
}
