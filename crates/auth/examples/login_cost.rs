//! What a login costs: one argon2id verification with Stratus's parameters. Run by
//! `bench/tokens.sh`.

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let hash = stratus_auth::passwords::hash("correct horse battery".into()).await?;
        let rounds = 40;
        let started = Instant::now();
        for _ in 0..rounds {
            assert!(
                stratus_auth::passwords::verify("correct horse battery".into(), hash.clone()).await
            );
        }
        let each = started.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "argon2id verification (m=19 MiB, t=2, p=1): {:>6.1} ms = {:>5.1} logins/s per core",
            each * 1e3,
            1.0 / each
        );
        Ok(())
    })
}
