//! NATS connection options from a URL that may carry the component's user and password
//! (`nats://coracle-jobs:PASSWORD@nats:4222`, the users of deploy/nats/accounts.conf).
//! async-nats does not read user-info from the URL, so it is taken out here; the URL itself is
//! only ever logged through `redact::redact_url_credentials`.

/// Options with the URL's user and password, when it has both.
pub fn connect_options(url: &str) -> async_nats::ConnectOptions {
    match user_and_password(url) {
        Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(user, password),
        None => async_nats::ConnectOptions::new(),
    }
}

/// `user:password` between `://` and the host's `@`.
fn user_and_password(url: &str) -> Option<(String, String)> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (info, _) = authority.rsplit_once('@')?;
    let (user, password) = info.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info() {
        assert_eq!(user_and_password("nats://u:p@h:4222"), Some(("u".into(), "p".into())));
        assert_eq!(user_and_password("nats://u:p@ss@h:4222/x"), Some(("u".into(), "p@ss".into())));
        assert_eq!(user_and_password("nats://h:4222"), None);
        assert_eq!(user_and_password("h:4222"), None);
    }
}
