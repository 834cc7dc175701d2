//! One bound for the network waits of the node's background tasks (the relay, housekeeping, the
//! broker's subscriber): a call that takes longer than its limit is an error like a broken
//! connection, so the caller drops the connection and retries instead of waiting forever on a
//! peer that went silent. Each caller counts its own timeouts (`on_timeout`) under the metric it
//! documents.

use std::future::Future;
use std::time::Duration;

/// `fut` within `limit`: its result, its error (with `what` as context), or a timeout error
/// after `on_timeout` ran.
pub async fn timed<T, E>(
    limit: Duration,
    what: &str,
    on_timeout: impl FnOnce(),
    fut: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| anyhow::Error::new(e).context(format!("{what} failed"))),
        Err(_) => {
            on_timeout();
            anyhow::bail!("{what} took longer than {limit:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_past_its_limit_is_an_error_and_is_counted_by_the_caller() {
        let mut counted = false;
        let late = timed(
            Duration::from_millis(10),
            "a silent peer",
            || counted = true,
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<(), std::io::Error>(())
            },
        )
        .await;
        assert!(counted);
        let e = late.expect_err("timed out");
        assert!(
            e.to_string().contains("a silent peer took longer than"),
            "{e}"
        );

        let failed = timed(
            Duration::from_secs(5),
            "a call",
            || panic!("not late"),
            async { Err::<(), _>(std::io::Error::other("refused")) },
        )
        .await;
        assert_eq!(
            format!("{:#}", failed.expect_err("failed")),
            "a call failed: refused"
        );
        let ok = timed(Duration::from_secs(5), "a call", || {}, async {
            Ok::<_, std::io::Error>(7)
        });
        assert_eq!(ok.await.expect("ok"), 7);
    }
}
