//! `docker-compose.yml` gives the same stack as `scripts/services.sh`: the same
//! server settings, users, passwords, databases and init SQL. Docker is not
//! needed: the files are read and compared.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value;

use crate::support::binary::repo_root;

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker-compose.yml")).unwrap_or_else(|e| panic!("docker-compose.yml is not YAML: {e}"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "docker-compose.yml has no service '{name}'");
    s
}

/// A string-or-list field (`command`, `healthcheck.test`) as a list of words.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        other => panic!("expected a string or a list, found {other:?}"),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's `environment`, in either the mapping or the `KEY=value` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = scalar(i);
                let (k, v) = s
                    .split_once('=')
                    .unwrap_or_else(|| panic!("environment entry {s:?} has no '='"));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment is neither a mapping nor a list: {other:?}"),
    }
}

fn env_var<'a>(env: &'a BTreeMap<String, String>, service: &str, key: &str) -> &'a str {
    env.get(key)
        .unwrap_or_else(|| panic!("service '{service}' does not set {key}"))
        .as_str()
}

/// A service's short-form volumes as (host path, container path).
fn volumes(service: &Value) -> Vec<(String, String)> {
    let Value::Sequence(items) = &service["volumes"] else {
        return Vec::new();
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let host = parts.next().unwrap_or_default().to_owned();
                let container = parts
                    .next()
                    .unwrap_or_else(|| panic!("volume {s:?} has no container path"))
                    .to_owned();
                (host, container)
            }
            Value::Mapping(_) => (scalar(&v["source"]), scalar(&v["target"])),
            other => panic!("unexpected volume entry {other:?}"),
        })
        .collect()
}

/// `postgresql/wasmcdc.conf` as `name = value` pairs, comments left out.
fn server_settings() -> Vec<(String, String)> {
    read("postgresql/wasmcdc.conf")
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("wasmcdc.conf line {l:?} has no '='"));
            (name.trim().to_owned(), value.trim().trim_matches('\'').to_owned())
        })
        .collect()
}

/// The parts of a `scheme://user:password@host:port/path` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    scheme: String,
    user: String,
    password: String,
    host: String,
    port: String,
    path: String,
}

fn parse_url(url: &str) -> Url {
    let (scheme, rest) = url.split_once("://").unwrap_or_else(|| panic!("{url:?} has no scheme"));
    let (auth, rest) = rest
        .split_once('@')
        .unwrap_or_else(|| panic!("{url:?} has no credentials"));
    let (user, password) = auth
        .split_once(':')
        .unwrap_or_else(|| panic!("{url:?} has no password"));
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, ""));
    Url {
        scheme: scheme.to_owned(),
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port: port.to_owned(),
        path: path.split('?').next().unwrap_or_default().to_owned(),
    }
}

#[test]
fn postgres_command_sets_every_server_setting() {
    let settings = server_settings();
    assert!(
        settings.iter().any(|(n, v)| n == "wal_level" && v == "logical"),
        "postgresql/wasmcdc.conf does not set wal_level = logical: {settings:?}"
    );
    let compose = compose();
    let command = words(&service(&compose, "postgres")["command"]);
    assert_eq!(
        command.first().map(String::as_str),
        Some("postgres"),
        "the postgres command is {command:?}"
    );
    // Every `-c name=value` (or `-c` `name=value`), and `--name=value`.
    let mut given = BTreeMap::new();
    let mut it = command.iter().skip(1);
    while let Some(w) = it.next() {
        let pair = if w == "-c" {
            it.next().cloned().unwrap_or_default()
        } else if let Some(p) = w.strip_prefix("-c") {
            p.to_owned()
        } else if let Some(p) = w.strip_prefix("--") {
            p.to_owned()
        } else {
            panic!("unexpected word {w:?} in the postgres command {command:?}");
        };
        let (name, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("{pair:?} in {command:?} is not name=value"));
        given.insert(name.replace('-', "_"), value.trim_matches('\'').to_owned());
    }
    for (name, value) in &settings {
        assert_eq!(
            given.get(name),
            Some(value),
            "docker-compose.yml's postgres command does not set {name}={value} as postgresql/wasmcdc.conf does; it sets {given:?}"
        );
    }
}

#[test]
fn postgres_image_installs_wal2json_for_its_major_version() {
    let compose = compose();
    let build = &service(&compose, "postgres")["build"];
    let (context, dockerfile) = match build {
        Value::String(c) => (c.clone(), "Dockerfile".to_owned()),
        Value::Mapping(_) => (
            scalar(&build["context"]),
            build.get("dockerfile").map_or("Dockerfile".to_owned(), scalar),
        ),
        other => panic!("the postgres service is not built from postgresql/: build is {other:?}"),
    };
    assert_eq!(
        Path::new(&context)
            .components()
            .filter(|c| c.as_os_str() != ".")
            .collect::<Vec<_>>(),
        Path::new("postgresql").components().collect::<Vec<_>>(),
        "the postgres service builds from {context:?}, not postgresql/"
    );
    let text = read(&format!("postgresql/{dockerfile}"));
    let from = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("FROM "))
        .unwrap_or_else(|| panic!("postgresql/{dockerfile} has no FROM line"));
    let image = from.split_whitespace().next().unwrap_or_default();
    let tag = image
        .strip_prefix("postgres:")
        .unwrap_or_else(|| panic!("postgresql/{dockerfile} is not based on the postgres image: FROM {from}"));
    let major: String = tag.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        !major.is_empty(),
        "the postgres image tag {tag:?} does not start with a major version"
    );
    let package = format!("postgresql-{major}-wal2json");
    let installs = text.contains("apt-get install") && text.split_whitespace().any(|w| w == package);
    assert!(
        installs,
        "postgresql/{dockerfile} does not apt-get install {package}:\n{text}"
    );
}

#[test]
fn credentials_and_databases_match_the_service_script() {
    let compose = compose();
    let services_sh = read("scripts/services.sh");
    let pg_init = read("postgresql/init.sql");
    let my_init = read("mariadb/init.sql");

    // PostgreSQL: the script sets postgres's password and creates `requests`.
    assert!(
        services_sh.contains("ALTER USER postgres PASSWORD 'postgres'"),
        "scripts/services.sh no longer sets the postgres/postgres credentials"
    );
    assert!(
        services_sh.contains("CREATE DATABASE requests"),
        "scripts/services.sh no longer creates the requests database"
    );
    assert!(
        pg_init.contains("CREATE TABLE IF NOT EXISTS itrequests"),
        "postgresql/init.sql does not create the seed table"
    );
    let pg_env = environment(service(&compose, "postgres"));
    assert_eq!(env_var(&pg_env, "postgres", "POSTGRES_USER"), "postgres");
    assert_eq!(env_var(&pg_env, "postgres", "POSTGRES_PASSWORD"), "postgres");
    assert_eq!(env_var(&pg_env, "postgres", "POSTGRES_DB"), "requests");

    // MariaDB: init.sql creates `requests`, the user mariadb/mariadb and its grants.
    let my_lower = my_init.to_lowercase();
    assert!(
        my_lower.contains("create database if not exists requests"),
        "mariadb/init.sql does not create the requests database"
    );
    for host in ["%", "localhost", "127.0.0.1"] {
        assert!(
            my_lower.contains(&format!(
                "create user if not exists 'mariadb'@'{host}' identified by 'mariadb'"
            )),
            "mariadb/init.sql does not create 'mariadb'@'{host}' with password 'mariadb'"
        );
    }
    let grant = my_lower
        .lines()
        .find(|l| l.starts_with("grant all privileges on requests.*"))
        .unwrap_or_else(|| panic!("mariadb/init.sql does not grant all privileges on requests.*"));
    assert!(
        grant.contains("'mariadb'@'%'"),
        "the grant does not reach 'mariadb'@'%': {grant}"
    );

    // RabbitMQ's default user.
    let mq_env = environment(service(&compose, "rabbitmq"));

    // The wasmcdc service uses exactly those credentials and databases, by service name.
    let app = service(&compose, "wasmcdc");
    let app_env = environment(app);
    let pg = parse_url(env_var(&app_env, "wasmcdc", "WASMCDC_PG_URL"));
    assert_eq!(
        pg,
        Url {
            scheme: "postgres".into(),
            user: env_var(&pg_env, "postgres", "POSTGRES_USER").into(),
            password: env_var(&pg_env, "postgres", "POSTGRES_PASSWORD").into(),
            host: "postgres".into(),
            port: "5432".into(),
            path: env_var(&pg_env, "postgres", "POSTGRES_DB").into(),
        },
        "WASMCDC_PG_URL does not match the postgres service"
    );
    let my = parse_url(env_var(&app_env, "wasmcdc", "WASMCDC_MARIADB_URL"));
    assert_eq!(
        my,
        Url {
            scheme: "mysql".into(),
            user: "mariadb".into(),
            password: "mariadb".into(),
            host: "mariadb".into(),
            port: "3306".into(),
            path: "requests".into(),
        },
        "WASMCDC_MARIADB_URL does not match mariadb/init.sql"
    );
    let amqp = parse_url(env_var(&app_env, "wasmcdc", "WASMCDC_AMQP_URL"));
    assert_eq!(
        (
            amqp.scheme.as_str(),
            amqp.user.as_str(),
            amqp.password.as_str(),
            amqp.host.as_str(),
            amqp.port.as_str()
        ),
        (
            "amqp",
            env_var(&mq_env, "rabbitmq", "RABBITMQ_DEFAULT_USER"),
            env_var(&mq_env, "rabbitmq", "RABBITMQ_DEFAULT_PASS"),
            "rabbitmq",
            "5672"
        ),
        "WASMCDC_AMQP_URL does not match the rabbitmq service"
    );
    assert_eq!(env_var(&app_env, "wasmcdc", "WASMCDC_SLOT"), "wasmcdc");
    assert_eq!(env_var(&app_env, "wasmcdc", "WASMCDC_TABLES"), "public.itrequests");

    // The app waits for healthy servers.
    for dep in ["postgres", "mariadb", "rabbitmq"] {
        let condition = &app["depends_on"][dep]["condition"];
        assert_eq!(
            condition.as_str(),
            Some("service_healthy"),
            "wasmcdc does not wait for {dep} to be healthy"
        );
    }
}

#[test]
fn init_sql_is_mounted_into_the_init_directories() {
    let compose = compose();
    for (name, file) in [("postgres", "postgresql/init.sql"), ("mariadb", "mariadb/init.sql")] {
        let mounts = volumes(service(&compose, name));
        let mount = mounts
            .iter()
            .find(|(host, _)| {
                Path::new(host)
                    .components()
                    .filter(|c| c.as_os_str() != ".")
                    .eq(Path::new(file).components())
            })
            .unwrap_or_else(|| panic!("service '{name}' does not mount ./{file}; its volumes are {mounts:?}"));
        assert!(
            mount.1.starts_with("/docker-entrypoint-initdb.d/") && mount.1.ends_with(".sql"),
            "service '{name}' mounts {file} at {}, not as a .sql file in /docker-entrypoint-initdb.d/",
            mount.1
        );
        assert!(repo_root().join(file).is_file(), "{file} is mounted but does not exist");
    }
}

#[test]
fn prometheus_scrapes_the_metrics_port_of_wasmcdc() {
    let compose = compose();
    let app = service(&compose, "wasmcdc");
    let listen = env_var(&environment(app), "wasmcdc", "WASMCDC_METRICS_ADDR").to_owned();
    let (host, port) = listen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("WASMCDC_METRICS_ADDR {listen:?} is not HOST:PORT"));
    assert_eq!(
        host, "0.0.0.0",
        "wasmcdc listens on {listen}, which other containers cannot reach"
    );
    let published = words(&app["ports"]);
    assert!(
        published.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "wasmcdc does not publish its metrics port {port}: {published:?}"
    );

    let prometheus = service(&compose, "prometheus");
    let mounts = volumes(prometheus);
    let (config, _) = mounts
        .iter()
        .find(|(_, container)| container == "/etc/prometheus/prometheus.yml")
        .unwrap_or_else(|| panic!("the prometheus service mounts no /etc/prometheus/prometheus.yml: {mounts:?}"));
    let config: Value = serde_yaml::from_str(&read(config.trim_start_matches("./")))
        .unwrap_or_else(|e| panic!("{config} is not YAML: {e}"));
    let Value::Sequence(jobs) = &config["scrape_configs"] else {
        panic!("{config:?} has no scrape_configs");
    };
    let targets: Vec<String> = jobs
        .iter()
        .filter(|job| job["metrics_path"].as_str().unwrap_or("/metrics") == "/metrics")
        .flat_map(|job| match &job["static_configs"] {
            Value::Sequence(groups) => groups.iter().flat_map(|g| words(&g["targets"])).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(
        targets.contains(&format!("wasmcdc:{port}")),
        "Prometheus scrapes {targets:?}, not wasmcdc's metrics port wasmcdc:{port}"
    );
}
