//! The deployment files: Kubernetes probes and ports agree with the config
//! they mount, every manifest passes an offline schema validator, and the
//! compose replica's setup script makes a streaming replica of a real
//! primary.

mod support;

use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The sluice config a ConfigMap carries, parsed by sluice itself.
fn mounted_config(cm: &Value) -> sluice::config::Config {
    let text = cm["data"]["pooler.toml"]
        .as_str()
        .expect("pooler.toml in the ConfigMap");
    // The Secret supplies it at run time; any value will do to parse.
    let text = text.replace("${APP_PASSWORD}", "placeholder");
    sluice::config::Config::parse(&text, "configmap").expect("the mounted config is valid")
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Resolves a probe's port (a number or a container port's name).
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port number or name");
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// Checks a pod's sluice container against the config it mounts.
fn check_sluice_container(
    pod_spec: &Value,
    container: &Value,
    cfg: &sluice::config::Config,
    what: &str,
    exposes_clients: bool,
) {
    let http_port = port_of(&cfg.http.listen);
    assert!(cfg.http.enabled, "{what}: the probes need [http]");
    let live = &container["livenessProbe"]["httpGet"];
    let ready = &container["readinessProbe"]["httpGet"];
    assert_eq!(live["path"], "/health", "{what}: liveness on /health");
    assert_eq!(ready["path"], "/ready", "{what}: readiness on /ready");
    assert_eq!(
        resolve_port(container, &live["port"]),
        http_port,
        "{what}: liveness port"
    );
    assert_eq!(
        resolve_port(container, &ready["port"]),
        http_port,
        "{what}: readiness port"
    );
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|p| p["containerPort"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    if exposes_clients {
        assert!(
            ports.contains(&port_of(&cfg.pooler.listen[0])),
            "{what}: the client port is exposed"
        );
    }
    // The grace period covers preStop, the drain and the delay before it.
    let grace = pod_spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    let pre_stop: u64 = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .and_then(|c| (c.first()? == "sleep").then(|| c.get(1)?.as_str()?.parse().ok())?)
        .unwrap_or(0);
    let drain = cfg.pooler.shutdown_timeout.0.as_secs() + cfg.pooler.shutdown_delay.0.as_secs();
    assert!(
        grace > pre_stop + drain,
        "{what}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + drain {drain}s"
    );
    assert!(
        container["resources"]["requests"]["cpu"].is_string(),
        "{what}: requests"
    );
    assert!(
        container["resources"]["limits"]["memory"].is_string(),
        "{what}: limits"
    );
}

#[test]
fn kubernetes_probes_and_ports_match_the_config() {
    let dir = root().join("deploy/kubernetes");
    let deployment = yaml_docs(&dir.join("deployment.yaml"));
    let deployment = find(&deployment, "Deployment")[0];
    let cm = yaml_docs(&dir.join("configmap.yaml"));
    let cfg = mounted_config(find(&cm, "ConfigMap")[0]);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sluice")
        .expect("a sluice container");
    check_sluice_container(pod, container, &cfg, "deployment.yaml", true);

    let service = yaml_docs(&dir.join("service.yaml"));
    let targets: Vec<String> = find(&service, "Service")[0]["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| match &p["targetPort"] {
            Value::Number(n) => n.to_string(),
            other => resolve_port(container, other).to_string(),
        })
        .collect();
    assert!(
        targets.contains(&port_of(&cfg.pooler.listen[0]).to_string()),
        "{targets:?}"
    );

    let hpa = yaml_docs(&dir.join("hpa.yaml"));
    let hpa = find(&hpa, "HorizontalPodAutoscaler")[0];
    assert_eq!(hpa["spec"]["minReplicas"].as_u64(), Some(2));
    assert_eq!(hpa["spec"]["maxReplicas"].as_u64(), Some(10));
    let cpu = hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"].as_u64();
    assert_eq!(cpu, Some(70));
    assert_eq!(
        find(&yaml_docs(&dir.join("pdb.yaml")), "PodDisruptionBudget").len(),
        1
    );

    // The sidecar example: sluice beside the application, on localhost.
    let sidecar = yaml_docs(&dir.join("sidecar-example.yaml"));
    let cfg = mounted_config(find(&sidecar, "ConfigMap")[0]);
    assert!(
        cfg.pooler.listen[0].starts_with("127.0.0.1:"),
        "a sidecar listens on localhost"
    );
    let pod = &find(&sidecar, "Deployment")[0]["spec"]["template"]["spec"];
    let all: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod[*k].as_sequence())
        .flatten()
        .collect();
    let sluice = all
        .iter()
        .find(|c| c["name"] == "sluice")
        .expect("a sluice sidecar");
    // Its clients share the pod's network: nothing needs exposing.
    check_sluice_container(pod, sluice, &cfg, "sidecar-example.yaml", false);
    let app_env = all
        .iter()
        .filter(|c| c["name"] != "sluice")
        .flat_map(|c| c["env"].as_sequence().cloned().unwrap_or_default())
        .find(|e| e["name"] == "DATABASE_URL")
        .expect("the application gets DATABASE_URL");
    let url = app_env["value"].as_str().unwrap();
    assert!(
        url.contains(&format!("127.0.0.1:{}", port_of(&cfg.pooler.listen[0]))),
        "{url}"
    );
}

#[test]
fn deploy_files_pass_the_offline_validators() {
    let out = Command::new("bash")
        .arg(root().join("deploy/validate.sh"))
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
        .output()
        .expect("run deploy/validate.sh");
    assert!(
        out.status.success(),
        "deploy/validate.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn compose_replica_setup_script_streams_from_a_real_primary() {
    let cluster = support::cluster();
    let dir = std::env::temp_dir().join(format!("sluice-replica-setup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root_user {
        assert!(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success());
    }
    let port = sluice::cluster::free_port();
    let script = root().join("deploy/compose/replica-setup.sh");
    let mut cmd = if root_user {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    let mut child = cmd
        .arg(&script)
        .env("PG_BIN", &cluster.bin)
        .env("PRIMARY_HOST", "127.0.0.1")
        .env("PRIMARY_PORT", cluster.primary.port.to_string())
        .env("REPLICATION_USER", "postgres")
        .env("PGDATA", &data)
        .env("REPLICA_PORT", port.to_string())
        .env("REPLICA_LISTEN", "127.0.0.1")
        .env("UNIX_SOCKETS", "off")
        .spawn()
        .expect("run replica-setup.sh");
    struct Stop<'a>(&'a Path, &'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = support::cluster().pg_ctl_stop_dir(self.0);
            let _ = std::fs::remove_dir_all(self.1);
        }
    }
    let _stop = Stop(&data, &dir);

    let deadline = Instant::now() + Duration::from_secs(60);
    let replica = loop {
        let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=app");
        if let Ok((client, conn)) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            break client;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "replica-setup.sh exited early"
        );
        assert!(
            Instant::now() < deadline,
            "the replica never accepted connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "a standby");
    let primary = support::connect_primary().await;
    let note = format!("replica-setup {}", std::process::id());
    primary
        .execute("INSERT INTO items (note) VALUES ($1)", &[&note])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = replica
            .query_one("SELECT count(*) FROM items WHERE note = $1", &[&note])
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write never streamed to the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(replica);
    drop(_stop);
    let _ = child.wait();
}
