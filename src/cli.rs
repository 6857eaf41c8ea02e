//! The commands that talk to a running `stratus up` through its control API: `status`, `scale`,
//! `rollout` and `logs`.
//!
//! They find it at `--control-addr` / `STRATUS_CONTROL_ADDR` if given, else at the address `up`
//! wrote into `<data dir>/control.addr`, else at 127.0.0.1:8070.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

pub const DEFAULT_CONTROL_ADDR: &str = "127.0.0.1:8070";

#[derive(clap::Args, Debug)]
pub struct Target {
    /// The data dir of the running `stratus up` (its control address is in control.addr there).
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./.stratus")]
    data_dir: PathBuf,

    /// The control API of `stratus up`, when not the one recorded in the data dir.
    #[arg(long, env = "STRATUS_CONTROL_ADDR")]
    control_addr: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print the JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    target: Target,
    /// One or more `component=replicas`, e.g. `catalog=3 orders=2`.
    #[arg(required = true, value_name = "COMPONENT=N")]
    pairs: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct RolloutArgs {
    #[command(flatten)]
    target: Target,
    /// The component whose replicas are replaced one at a time.
    component: String,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    target: Target,
    /// Only this component's replicas.
    component: Option<String>,
    /// Keep printing lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// How many of the last lines to print first: of all replicas together from the event
    /// sink (at most 1,000), of each replica from the files.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: usize,
    /// Only the lines of this trace (32 hex digits): logged inside its requests and messages.
    #[arg(long, value_name = "TRACE_ID")]
    trace: Option<String>,
    /// Only lines at this level or above (trace, debug, info, warn, error).
    #[arg(long)]
    level: Option<String>,
    /// Only lines with this text in them (any case; from the sink: in the message or fields).
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// Read the replicas' log files even when the event sink runs.
    #[arg(long)]
    files: bool,
}

impl Target {
    fn base(&self) -> String {
        let given = self
            .control_addr
            .clone()
            .filter(|a| !a.ends_with(":0") && !a.is_empty());
        let recorded = || {
            std::fs::read_to_string(self.data_dir.join("control.addr"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let address = given
            .or_else(recorded)
            .unwrap_or_else(|| DEFAULT_CONTROL_ADDR.to_string());
        format!("http://{address}")
    }

    /// The control token: `STRATUS_CONTROL_TOKEN`, else the one `up` wrote in the data dir.
    fn token(&self) -> Option<String> {
        std::env::var("STRATUS_CONTROL_TOKEN")
            .ok()
            .or_else(|| {
                std::fs::read_to_string(self.data_dir.join(crate::control::TOKEN_FILE)).ok()
            })
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty())
    }

    fn client(&self) -> anyhow::Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = self.token() {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the control token")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Client {
            base: self.base(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .default_headers(headers)
                .build()?,
        })
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// Sends the request; a refused connection becomes "stratus up is not running", and a
    /// problem document becomes its detail.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if error.is_connect() => bail!(
                "stratus up is not running (nothing answers at {}); start it with `stratus up`, \
                 or point --data-dir / STRATUS_CONTROL_ADDR at the one that runs",
                self.base
            ),
            Err(error) => return Err(error).context("talking to stratus up"),
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["detail"].as_str() {
            Some(detail) => bail!("{detail}"),
            None => bail!("stratus up answered {status}"),
        }
    }

    /// Copies a streamed text body to stdout as it arrives; returns all of it.
    async fn print_stream(&self, mut response: reqwest::Response) -> anyhow::Result<String> {
        use std::io::Write;
        let mut all = String::new();
        while let Some(chunk) = response.chunk().await.context("reading from stratus up")? {
            let text = String::from_utf8_lossy(&chunk);
            print!("{text}");
            let _ = std::io::stdout().flush();
            all.push_str(&text);
        }
        Ok(all)
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let response = client
        .send(client.http.get(format!("{}/v1/status", client.base)))
        .await?;
    let view: Value = response.json().await.context("reading the status")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    print!("{}", table(&view));
    Ok(())
}

/// `spiffe://stratus.local/service/catalog` as `service/catalog` (the trust domain is one).
fn short_identity(id: &str) -> String {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or_else(|| id.to_string(), |(_, path)| path.to_string())
}

/// The status as a table, one line per replica.
fn table(view: &Value) -> String {
    let mut rows = vec![[
        "COMPONENT",
        "#",
        "PID",
        "PORT",
        "INSTANCE",
        "HEALTH",
        "RESTARTS",
        "UPTIME",
        "IDENTITY",
        "CERT",
        "LAST EXIT",
    ]
    .map(String::from)
    .to_vec()];
    let empty = Vec::new();
    for component in view["components"].as_array().unwrap_or(&empty) {
        let name = component["name"].as_str().unwrap_or("?");
        let replicas = component["replicas"].as_array().unwrap_or(&empty);
        let ready = replicas.iter().filter(|r| r["health"] == "ready").count();
        let mut label = format!("{name} {ready}/{}", component["desired"]);
        if component["rolling_out"] == true {
            label.push_str(" (rolling out)");
        }
        if replicas.is_empty() {
            rows.push(vec![label.clone(), "-".into()]);
        }
        for (i, replica) in replicas.iter().enumerate() {
            let text = |key: &str| match &replica[key] {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            rows.push(vec![
                if i == 0 { label.clone() } else { String::new() },
                text("ordinal"),
                text("pid"),
                text("port"),
                short_id(&text("instance_id")),
                match replica["registry"].as_str() {
                    // Running, but the registry's checks say otherwise: show that.
                    Some(registry @ ("warning" | "critical")) => {
                        format!("{} ({registry})", text("health"))
                    }
                    _ => text("health"),
                },
                text("restarts"),
                uptime(replica["uptime_seconds"].as_f64().unwrap_or(0.0)),
                replica["identity"]
                    .as_str()
                    .map_or("-".to_string(), short_identity),
                match replica["certificate_expires_in"].as_i64() {
                    Some(seconds) if seconds <= 0 => "expired".to_string(),
                    Some(seconds) => format!("{} left", uptime(seconds as f64)),
                    None => "-".to_string(),
                },
                text("last_exit"),
            ]);
        }
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The last 12 characters of an instance id: ids are UUIDv7, whose first characters are the
/// start time and alike for replicas started together; the end is random.
fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    chars[chars.len().saturating_sub(12)..].iter().collect()
}

fn uptime(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0 if seconds == 0.0 => "-".into(),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let mut replicas = serde_json::Map::new();
    for pair in &args.pairs {
        let Some((name, count)) = pair.split_once('=') else {
            bail!("`{pair}`: write component=replicas, e.g. catalog=3");
        };
        let count: usize = count
            .trim()
            .parse()
            .with_context(|| format!("`{pair}`: the replica count must be a whole number"))?;
        replicas.insert(name.trim().to_string(), count.into());
    }
    let client = args.target.client()?;
    let response = client
        .send(
            client
                .http
                .post(format!("{}/v1/scale", client.base))
                .json(&serde_json::json!({ "replicas": replicas })),
        )
        .await?;
    let body: Value = response.json().await?;
    for line in body["scaled"].as_array().into_iter().flatten() {
        println!("scaled {}", line.as_str().unwrap_or_default());
    }
    Ok(())
}

pub async fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let response = client
        .send(
            client
                .http
                .post(format!("{}/v1/rollout/{}", client.base, args.component)),
        )
        .await?;
    let all = client.print_stream(response).await?;
    if !all.contains(" complete: ") {
        bail!("the rollout of {} did not complete", args.component);
    }
    Ok(())
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let mut url =
        reqwest::Url::parse(&format!("{}/v1/logs", client.base)).context("the control address")?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("lines", &args.lines.to_string());
        if let Some(component) = &args.component {
            query.append_pair("component", component);
        }
        if args.follow {
            query.append_pair("follow", "true");
        }
        for (key, value) in [
            ("trace", &args.trace),
            ("level", &args.level),
            ("grep", &args.grep),
        ] {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        if args.files {
            query.append_pair("files", "true");
        }
    }
    let request = client.http.get(url);
    let response = client.send(request).await?;
    client.print_stream(response).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up() {
        let view = serde_json::json!({"components": [
            {"name": "catalog", "desired": 2, "rolling_out": false, "replicas": [
                {"ordinal": 0, "pid": 41, "port": 40001, "instance_id": "abc", "health": "ready",
                 "restarts": 1, "uptime_seconds": 75.0, "last_exit": "killed by SIGKILL",
                 "identity": "spiffe://stratus.local/service/catalog",
                 "certificate_expires_in": 1790},
                {"ordinal": 1, "pid": null, "port": null, "instance_id": "def",
                 "health": "restarting", "restarts": 2, "uptime_seconds": 0.0, "last_exit": "exit code 1"}
            ]}
        ]});
        let text = table(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("catalog 1/2"), "{text}");
        assert!(lines[1].contains("1m15s") && lines[1].contains("killed by SIGKILL"));
        assert!(
            lines[1].contains("service/catalog") && lines[1].contains("29m50s left"),
            "{text}"
        );
        assert_eq!(lines[0].find("HEALTH"), lines[1].find("ready"), "{text}");
    }
}
