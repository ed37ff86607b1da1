//! Password authentication: SCRAM-SHA-256 against the one configured user, so the password
//! never crosses the wire, with or without TLS.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{
    SCRAM_ITERATIONS, ScramAuth, gen_salted_password,
};
use datafusion_postgres::pgwire::api::auth::{AuthSource, LoginInfo, Password};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

use crate::options::Credentials;

/// The configured user's password, salted afresh for each login.
#[derive(Debug)]
struct OneUser(Credentials);

#[async_trait]
impl AuthSource for OneUser {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        if user != self.0.user {
            // Same answer as a wrong password: which users exist is not for strangers.
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            ))));
        }
        let salt = rand::random::<[u8; 16]>().to_vec();
        let salted = gen_salted_password(&self.0.password, &salt, SCRAM_ITERATIONS);
        Ok(Password::new(Some(salt), salted))
    }
}

/// SCRAM for `credentials`.
pub(crate) fn scram(credentials: &Credentials) -> ScramAuth {
    let mut scram = ScramAuth::new(Arc::new(OneUser(credentials.clone())));
    scram.set_iterations(SCRAM_ITERATIONS);
    scram
}
