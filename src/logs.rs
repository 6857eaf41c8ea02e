//! Reading the replicas' log files: `<data dir>/logs/<component>-<ordinal>.log`, one per replica
//! slot, appended across restarts. `tail` gives the last lines of each; `follow` then sends what
//! is appended (and picks up files that appear, e.g. after a scale up), a few times a second.
//! Only lines that pass the filters (`--trace`, `--level`, `--grep`: [`Filter`]) are sent.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::logs_filter::Filter;

/// The most of a file read to find its last lines.
const TAIL_WINDOW: u64 = 512 * 1024;
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// The log files of `component` (or of all), as (label, path), sorted by label.
pub fn files(dir: &Path, component: Option<&str>) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .to_string();
            let (owner, ordinal) = name.rsplit_once('-')?;
            ordinal.parse::<usize>().ok()?;
            if component.is_some_and(|c| c != owner) {
                return None;
            }
            Some((name, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// The last `lines` lines of `path` that pass `filter` (fewer if it has fewer within its last
/// 512 KiB), and the file's length.
pub fn tail(path: &Path, lines: usize, filter: &Filter) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0); // Most likely cut in the middle.
    }
    all.retain(|line| filter.passes(line));
    let from = all.len().saturating_sub(lines);
    Ok((
        all[from..].iter().map(|l| l.to_string()).collect(),
        start + bytes.len() as u64,
    ))
}

/// Sends the last `lines` of every matching file, each prefixed with its label; with `follow`,
/// keeps sending new lines until the receiver goes away.
pub async fn stream(
    dir: PathBuf,
    component: Option<String>,
    lines: usize,
    follow: bool,
    filter: Filter,
    out: mpsc::Sender<String>,
) {
    let mut offsets: Vec<(String, PathBuf, u64)> = Vec::new();
    for (label, path) in files(&dir, component.as_deref()) {
        let Ok((last, length)) = tail(&path, lines, &filter) else {
            continue;
        };
        for line in last {
            if out.send(format!("{label} | {line}\n")).await.is_err() {
                return;
            }
        }
        offsets.push((label, path, length));
    }
    if !follow {
        return;
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        if out.is_closed() {
            return;
        }
        for (label, path) in files(&dir, component.as_deref()) {
            if !offsets.iter().any(|(l, _, _)| *l == label) {
                offsets.push((label, path, 0));
            }
        }
        for (label, path, offset) in &mut offsets {
            let Ok(new) = read_from(path, offset) else {
                continue;
            };
            for line in new.into_iter().filter(|line| filter.passes(line)) {
                if out.send(format!("{label} | {line}\n")).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whole lines appended since `offset`, which moves past them (a partial last line waits).
fn read_from(path: &Path, offset: &mut u64) -> std::io::Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    if length < *offset {
        *offset = 0; // Truncated: start over.
    }
    if length == *offset {
        return Ok(Vec::new());
    }
    file.seek(SeekFrom::Start(*offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return Ok(Vec::new());
    };
    *offset += end as u64 + 1;
    Ok(String::from_utf8_lossy(&bytes[..end])
        .lines()
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_follow_see_whole_lines() {
        let dir = std::env::temp_dir().join(format!("stratus-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("catalog-0.log");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        std::fs::write(dir.join("orders-1.log"), "x\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "x\n").unwrap();
        let (last, mut offset) = tail(&path, 2, &Filter::default()).unwrap();
        assert_eq!(last, ["two", "three"]);
        let grep = Filter::new(None, None, Some("O")).unwrap();
        assert_eq!(tail(&path, 5, &grep).unwrap().0, ["one", "two"]);
        let labels: Vec<String> = files(&dir, None).into_iter().map(|f| f.0).collect();
        assert_eq!(labels, ["catalog-0", "orders-1"]);
        assert_eq!(files(&dir, Some("orders")).len(), 1);
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"four\nfi").unwrap();
        assert_eq!(read_from(&path, &mut offset).unwrap(), ["four"]);
        file.write_all(b"ve\n").unwrap();
        assert_eq!(read_from(&path, &mut offset).unwrap(), ["five"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
