//! The crate's error type. Variants say when they happen; database errors name the file or
//! URL (password removed) so an operator knows which one is wrong.

/// Errors from the store and the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An SQLite call failed on the named database file.
    #[error("SQLite database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A PostgreSQL call failed on the named server (URL without password).
    #[error("PostgreSQL {url}: {}", postgres_message(source))]
    Postgres {
        url: String,
        #[source]
        source: postgres::Error,
    },
    /// No pooled connection could be had in time.
    #[error("database {target}: no connection available: {source}")]
    Pool {
        target: String,
        #[source]
        source: r2d2::Error,
    },
    /// The schema is missing or older than this binary needs.
    #[error("database {target}: {message}")]
    Schema { target: String, message: String },
    /// The delivery names a workflow run already bound to another organization.
    #[error(
        "Workflow run {workflow_run_id} belongs to organization {bound_organization_id}, not {organization_id}"
    )]
    OrganizationMismatch {
        workflow_run_id: i64,
        bound_organization_id: i64,
        organization_id: i64,
    },
    /// The caller's input is wrong; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with what is stored (for example a credential uuid owned by
    /// another organization); nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The store failed for a whole batch (for example the disk is full); nothing of the
    /// batch was written and the caller may try again.
    #[error("{0}")]
    Unavailable(String),
    /// A configuration value is missing or wrong; the service refuses to start.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The server's own message for a database error (the plain `Display` says only "db error").
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Removes the password from a database URL so it can be shown in errors and logs.
pub fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db -> postgres://user:***@host/db
    let Some(scheme_end) = url.find("://") else {
        return redact_password_param(url);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return redact_password_param(url);
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let shown = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        user.to_string()
    };
    redact_password_param(&format!(
        "{}{}@{}",
        &url[..scheme_end + 3],
        shown,
        &rest[at..].trim_start_matches('@')
    ))
}

fn redact_password_param(url: &str) -> String {
    // `?password=...&` query parameters and `password=... ` key=value connection strings.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("password=") {
        let value_start = i + "password=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let value_len = rest[value_start..]
            .find(['&', ' '])
            .unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        for (url, want) in [
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=pw&x=1",
                "postgres://h/db?password=***&x=1",
            ),
            ("host=h password=pw user=u", "host=h password=*** user=u"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn mismatch_message_names_both_organizations() {
        let e = Error::OrganizationMismatch {
            workflow_run_id: 9,
            bound_organization_id: 1,
            organization_id: 2,
        };
        assert_eq!(
            e.to_string(),
            "Workflow run 9 belongs to organization 1, not 2"
        );
    }
}
