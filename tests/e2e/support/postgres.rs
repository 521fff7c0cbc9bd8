//! A throw-away Postgres cluster for tests: `initdb` and `pg_ctl` (Debian's `postgresql`
//! package, installed by `scripts/setup`) in a temp dir, on a free loopback port, with a
//! password-protected user over TCP. As root (CI), the server runs as the `postgres` user via
//! `runuser`, since Postgres refuses to run as root.
//!
//! When the binaries are absent, [`Postgres::start`] returns `None` after a loud message, so a
//! developer without Postgres can still run the other tests; under `CI` it panics instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::free_port;

/// The user and password of every test cluster.
pub const USER: &str = "strangler";
pub const PASSWORD: &str = "pg-test-secret-7c1e";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// Whether the server has a certificate (see [`Postgres::start_with_tls`]).
    tls: bool,
}

/// The name the TLS test server's certificate is issued for (reached at 127.0.0.1 with
/// `hostaddr`): a name, so that `verify-full` has one to check.
pub const TLS_HOST: &str = "postgres.test";

/// The directory of `initdb` and `pg_ctl`: the newest under /usr/lib/postgresql, or on PATH.
fn binaries() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(newest) = versions.pop() {
        return Some(newest);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").exists()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl Postgres {
    /// Creates and starts a cluster, or `None` when Postgres is not installed here (never in CI).
    pub fn start() -> Option<Postgres> {
        Self::start_as(false)
    }

    /// [`Postgres::start`], serving TLS too (`ssl = on`) with a certificate for [`TLS_HOST`]
    /// signed by a throw-away CA ([`Postgres::ca_file`]), made with the `openssl` CLI.
    pub fn start_with_tls() -> Option<Postgres> {
        Self::start_as(true)
    }

    fn start_as(tls: bool) -> Option<Postgres> {
        let Some(bin) = binaries() else {
            let message = "Postgres (initdb, pg_ctl) is not installed: run scripts/setup";
            if std::env::var_os("CI").is_some() {
                panic!("{message}; CI must run the Postgres tests");
            }
            eprintln!("\n\n!!!!! SKIPPED: {message} !!!!!\n\n");
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("pwfile");
        std::fs::write(&password_file, PASSWORD).unwrap();
        if tls {
            make_certificates(dir.path());
        }
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster directory");
        }
        let postgres = Postgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            tls,
        };
        let data = postgres.data();
        let output = postgres
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .args(["-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        postgres.start_server();
        Some(postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the cluster's binaries, run as `postgres` when the tests are root.
    fn command(&self, binary: &str) -> Command {
        let program = self.bin.join(binary);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Starts the server; `pg_ctl -w` returns once it accepts connections (bounded by `-t`).
    pub fn start_server(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key",
                self.dir.path().display()
            ));
        }
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed:\n{}", self.log());
    }

    /// Stops the server at once (`-m fast`: open sessions are ended).
    pub fn stop_server(&self) {
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop failed:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The URL without the password, as a config would hold it with a password file.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The CA that signed the server's certificate (with [`Postgres::start_with_tls`]).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing this server has.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The URL with the password in it.
    pub fn url_with_password(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// A file holding the password, readable by anyone (as a mounted Secret would be by the
    /// proxy's user).
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("pg-password");
        std::fs::write(&path, format!("{PASSWORD}\n")).unwrap();
        path
    }

    /// Starts `sql` with psql in the background (a session holding a lock, say); the caller
    /// waits for what it does and ends it.
    pub fn spawn_query(&self, sql: &str) -> std::process::Child {
        self.psql(sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn psql(&self, sql: &str) -> Command {
        let mut command = self.command("psql");
        command
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", "postgres"])
            .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        command
    }

    /// Runs `sql` with psql over the unix socket; its output, unaligned and without headers.
    pub fn query(&self, sql: &str) -> String {
        let output = self
            .command("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", "postgres"])
            .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Writes into `dir` a CA (`ca.pem`), a server certificate for [`TLS_HOST`] it signed
/// (`server.pem`, key `server.key`, mode 0600 as Postgres demands) and an unrelated CA
/// (`other-ca.pem`), with the `openssl` CLI.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI (Debian's openssl package)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    std::fs::write(
        dir.join("certs.cnf"),
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = strangler test\n\
             [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign\n\
             subjectKeyIdentifier = hash\n\
             [server]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n\
             subjectAltName = DNS:{TLS_HOST}\nauthorityKeyIdentifier = keyid\n"
        ),
    )
    .unwrap();
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (keyout, out) = (format!("{ca}.key"), format!("{ca}.pem"));
        let mut args = vec!["req", "-x509", "-config", "certs.cnf", "-extensions", "ca"];
        args.extend(key);
        args.extend(["-keyout", &keyout, "-out", &out, "-days", "2"]);
        openssl(&args);
    }
    let mut args = vec!["req", "-new", "-config", "certs.cnf"];
    args.extend(key);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&args);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        "certs.cnf",
        "-extensions",
        "server",
        "-out",
        "server.pem",
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}
