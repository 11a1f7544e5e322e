//! The CLI's side of the admin API: one GET (`crate::http::get`), then the JSON document
//! parsed, or the server's error message.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;

use crate::http::get;
use crate::status::api::ApiError;

/// `GET path` and parse the body as `T`; a non-2xx answer is an error carrying the server's
/// message.
pub async fn get_json<T: DeserializeOwned>(admin: SocketAddr, path: &str) -> anyhow::Result<T> {
    let (status, body) = get(admin, path).await?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        bail!("{message} (HTTP {status} from {admin}{path})");
    }
    serde_json::from_str(&body).with_context(|| format!("parsing the answer of {admin}{path}"))
}
