//! The echo server as a Windows service: started, stopped and watched by the
//! service control manager (SCM).
//!
//! ```text
//! windows_service install   [--service NAME] [--name PIPE] [--allow WHO]... [--log FILE]
//! windows_service uninstall [--service NAME]
//! windows_service run       [--service NAME] [--name PIPE] [--allow WHO]... [--log FILE]
//! windows_service console   [--name PIPE] [--allow WHO]...
//! ```
//!
//! `install` registers this executable with the SCM as service NAME (default
//! `pipeserve-service`): its own process, started on demand, running as
//! LocalSystem, binary path `EXE run --service NAME --name PIPE ...` (`run`
//! is what the SCM starts). Then `sc start NAME`, `sc query NAME`,
//! `sc stop NAME`; `uninstall` stops it if it runs and deletes it. `console`
//! runs the same server in the foreground: it prints `listening on ADDRESS`
//! once ready and drains on Ctrl-C.
//!
//! The pipe (default `pipeserve-service`, i.e. `\\.\pipe\pipeserve-service`)
//! serves length-delimited echo, as `echo_server` does. Start arguments
//! override the installed ones for one run (`sc start NAME --name other`).
//! Running as LocalSystem, the pipe admits only SYSTEM until `--allow` names
//! who else may connect (`interactive`, `authenticated`, a SID...: see
//! `Builder::allow`), and a client checks that the server is SYSTEM:
//! `install --allow interactive`, then `pipecat --server-user S-1-5-18
//! --name PIPE hello`. A service has no console: `--log FILE` appends its
//! log (and the library's) to FILE.
//!
//! # The protocol with the SCM
//!
//! The SCM runs the binary path. `run` gives the main thread to the SCM
//! (`service_dispatcher::start`, `StartServiceCtrlDispatcherW`), which calls
//! the service's main on a thread of its own and delivers control events
//! (Stop, Shutdown, Interrogate) to a handler on the main thread. The service
//! tells the SCM where it is with `SetServiceStatus`:
//!
//! ```text
//! state           checkpoint  wait hint  accepts         when
//! START_PENDING   1           5 s        -               the service's main begins
//! START_PENDING   2           5 s        -               the pipe instances exist (bind)
//! RUNNING         0           0          Stop, Shutdown  Handle::ready(): every instance listens
//! STOP_PENDING    1, 2, 3...  3 s        -               Stop or Shutdown: Handle::shutdown(),
//!                                                        one more checkpoint each second it drains
//! STOPPED         0           0          -               drained: exit code 0; failed: see below
//! ```
//!
//! A pending state is a promise: the checkpoint grows, or the state changes,
//! within the wait hint, or the SCM takes the service for hung. RUNNING comes
//! only once every instance listens, so whoever waits for it (`sc query`, a
//! dependent service) may connect at once. The drain ends within the
//! server's drain timeout (10 s). A Shutdown control (the machine stops)
//! starts the same drain, but Windows gives services only some 5 to 20 s
//! then: a longer drain would accept `PRESHUTDOWN` instead.
//!
//! A failure ends in STOPPED with WIN32_EXIT_CODE 1066
//! (`ERROR_SERVICE_SPECIFIC_ERROR`) and SERVICE_EXIT_CODE: 1 for bad start
//! arguments, 2 if the server could not start (e.g. the bind failed: a bad
//! or taken name), 3 if it failed while serving.
//!
//! On other systems this example only parses its arguments and says it is
//! Windows-only (exit 1). An unknown flag prints the usage to stderr and
//! exits 2; `--help` prints it to stdout and exits 0.

use std::{ffi::OsString, path::PathBuf, str::FromStr};

use pipeserve::server::Allow;

const USAGE: &str = "usage: windows_service install|uninstall|run|console \
[--service NAME] [--name PIPE] [--allow authenticated|interactive|SID|...]... [--log FILE]";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Install,
    Uninstall,
    Run,
    Console,
}

impl FromStr for Command {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "install" => Ok(Command::Install),
            "uninstall" => Ok(Command::Uninstall),
            "run" => Ok(Command::Run),
            "console" => Ok(Command::Console),
            _ => Err(format!(
                "unknown command {s:?}: install, uninstall, run or console"
            )),
        }
    }
}

#[derive(Clone, Debug)]
#[cfg_attr(not(windows), allow(dead_code))]
struct Args {
    command: Option<Command>,
    /// The service's name with the SCM.
    service: String,
    /// The pipe's name.
    name: String,
    /// Who may connect beside the service's own user.
    allow: Vec<Allow>,
    log: Option<PathBuf>,
    help: bool,
}

impl Args {
    /// `args` parsed over `self`: the command line, or (in the service) the
    /// start arguments over the command line's. Stops at `--help`.
    fn parse(mut self, args: impl IntoIterator<Item = OsString>) -> Result<Args, lexopt::Error> {
        use lexopt::prelude::*;
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next()? {
            match arg {
                Value(command) if self.command.is_none() => self.command = Some(command.parse()?),
                Long("service") => self.service = parser.value()?.string()?,
                Long("name") => self.name = parser.value()?.string()?,
                Long("allow") => self.allow.push(parser.value()?.parse()?),
                Long("log") => self.log = Some(parser.value()?.into()),
                Short('h') | Long("help") => {
                    self.help = true;
                    return Ok(self);
                }
                _ => return Err(arg.unexpected()),
            }
        }
        Ok(self)
    }
}

fn main() {
    let defaults = Args {
        command: None,
        service: "pipeserve-service".into(),
        name: "pipeserve-service".into(),
        allow: Vec::new(),
        log: None,
        help: false,
    };
    let args = defaults
        .parse(std::env::args_os().skip(1))
        .unwrap_or_else(|e| usage_error(e.to_string()));
    if args.help {
        println!("{USAGE}");
        return;
    }
    let Some(command) = args.command else {
        usage_error("missing the command: install, uninstall, run or console".into())
    };
    #[cfg(windows)]
    std::process::exit(service::main(command, args));
    #[cfg(not(windows))]
    {
        let _ = (command, args);
        eprintln!(
            "windows_service: Windows only: it runs under the Windows service control manager"
        );
        std::process::exit(1);
    }
}

fn usage_error(message: String) -> ! {
    eprintln!("windows_service: {message}\n{USAGE}");
    std::process::exit(2);
}

#[cfg(windows)]
mod service {
    use std::{
        convert::Infallible, error::Error, ffi::OsString, fmt, fs::OpenOptions, future::Future,
        io::Write, path::Path, sync::Arc, sync::Mutex, sync::OnceLock, time::Duration,
    };

    use bytes::Bytes;
    use pipeserve::{Address, Server, Summary};
    use tokio::sync::Notify;
    use windows_service::{
        define_windows_service,
        service::{
            ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl,
            ServiceExitCode, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
            ServiceType,
        },
        service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle},
        service_dispatcher,
        service_manager::{ServiceManager, ServiceManagerAccess},
    };

    use super::{Args, Command};

    /// How long a stop waits for connections before it cuts them.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    const START_WAIT_HINT: Duration = Duration::from_secs(5);
    /// A new STOP_PENDING checkpoint each second, promised within 3 s.
    const STOP_TICK: Duration = Duration::from_secs(1);
    const STOP_WAIT_HINT: Duration = Duration::from_secs(3);
    /// `ERROR_FAILED_SERVICE_CONTROLLER_CONNECT`: `run` was not started by the SCM.
    const NOT_FROM_SCM: i32 = 1063;

    pub(super) fn main(command: Command, args: Args) -> i32 {
        let done = match command {
            Command::Install => install(&args),
            Command::Uninstall => uninstall(&args),
            Command::Run => return run(args),
            Command::Console => return console(&args),
        };
        match done {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("windows_service: {}", chain(&*e));
                1
            }
        }
    }

    // --- The server, as both the service and the console run it. ---

    /// What the server is doing, as [`serve`] reports it.
    enum Step<'a> {
        /// The pipe instances exist.
        Bound,
        /// Every instance listens.
        Listening(&'a Address),
        /// Draining after the stop; the checkpoint counts 1, 2, 3... a second apart.
        Draining(u32),
    }

    /// Why the service stopped other than cleanly; its service-specific exit code.
    enum Failure {
        Args(String),
        Start(String),
        Serve(String),
    }

    impl Failure {
        fn exit_code(&self) -> u32 {
            match self {
                Failure::Args(_) => 1,
                Failure::Start(_) => 2,
                Failure::Serve(_) => 3,
            }
        }
    }

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Failure::Args(e) => write!(f, "bad start arguments: {e}"),
                Failure::Start(e) => write!(f, "could not start: {e}"),
                Failure::Serve(e) => write!(f, "failed while serving: {e}"),
            }
        }
    }

    /// Serves length-delimited echo on `args.name` until `stop`, then drains.
    async fn serve(
        args: &Args,
        stop: impl Future<Output = ()>,
        mut report: impl FnMut(Step<'_>),
    ) -> Result<Summary, Failure> {
        let mut builder = Server::builder().drain_timeout(DRAIN_TIMEOUT);
        for who in &args.allow {
            builder = builder.allow(who.clone());
        }
        let server = builder
            .bind(&args.name)
            .map_err(|e| Failure::Start(e.to_string()))?;
        report(Step::Bound);
        let (handle, address) = (server.handle(), server.local_addr().clone());
        let echo = tower::service_fn(|frame: Bytes| async move { Ok::<_, Infallible>(frame) });
        let mut serving = tokio::spawn(server.serve(echo));
        tokio::select! {
            () = handle.ready() => report(Step::Listening(&address)),
            ended = &mut serving => return finished(ended),
        }
        tokio::select! {
            () = stop => handle.shutdown(),
            ended = &mut serving => return finished(ended),
        }
        let mut ticks = tokio::time::interval(STOP_TICK);
        let mut checkpoint = 0;
        loop {
            tokio::select! {
                biased;
                ended = &mut serving => return finished(ended),
                _ = ticks.tick() => {
                    checkpoint += 1;
                    report(Step::Draining(checkpoint));
                }
            }
        }
    }

    /// The server task's end: its summary, or its error (or panic).
    fn finished(
        ended: Result<Result<Summary, pipeserve::Error>, tokio::task::JoinError>,
    ) -> Result<Summary, Failure> {
        match ended {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(e)) => Err(Failure::Serve(e.to_string())),
            Err(e) => Err(Failure::Serve(format!("the server task: {e}"))),
        }
    }

    fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Runtime::new().map_err(|e| Failure::Start(format!("tokio runtime: {e}")))
    }

    // --- The service. ---

    define_windows_service!(ffi_service_main, service_main);

    /// The command line's arguments, for the service's main.
    static ARGS: OnceLock<Args> = OnceLock::new();

    /// Hands this thread to the SCM until the service has stopped.
    fn run(args: Args) -> i32 {
        if let Err(e) = init_logging(args.log.as_deref()) {
            eprintln!("windows_service: log file: {e}");
            return 1;
        }
        let service = args.service.clone();
        ARGS.set(args).expect("run once");
        match service_dispatcher::start(&service, ffi_service_main) {
            Ok(()) => 0,
            Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(NOT_FROM_SCM) => {
                eprintln!(
                    "windows_service: `run` is for the service control manager; \
                     `install` then `sc start {service}`, or `console` to run in the foreground"
                );
                1
            }
            Err(e) => {
                eprintln!("windows_service: {}", chain(&e));
                1
            }
        }
    }

    /// The service's main, on a thread of the SCM's dispatcher. `start_args`:
    /// the service's name, then the arguments of `sc start NAME ...`.
    fn service_main(start_args: Vec<OsString>) {
        let args = ARGS
            .get()
            .expect("set before the dispatcher starts")
            .clone();
        if let Err(e) = run_service(args, start_args) {
            tracing::error!("the service control manager refused: {}", chain(&e));
        }
    }

    fn run_service(args: Args, start_args: Vec<OsString>) -> windows_service::Result<()> {
        let stop = Arc::new(Notify::new());
        let on_stop = stop.clone();
        let status =
            service_control_handler::register(&args.service, move |control| match control {
                ServiceControl::Stop | ServiceControl::Shutdown => {
                    tracing::info!("service control {control:?}: stopping");
                    on_stop.notify_one();
                    ServiceControlHandlerResult::NoError
                }
                ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
                _ => ServiceControlHandlerResult::NotImplemented,
            })?;
        set_status(
            status,
            ServiceState::StartPending,
            1,
            ServiceExitCode::NO_ERROR,
        );

        let served = args
            .parse(start_args.into_iter().skip(1))
            .map_err(|e| Failure::Args(e.to_string()))
            .and_then(|args| {
                // Dropped before STOPPED is reported: nothing runs after that.
                runtime()?.block_on(serve(&args, stop.notified(), |step| match step {
                    Step::Bound => set_status(
                        status,
                        ServiceState::StartPending,
                        2,
                        ServiceExitCode::NO_ERROR,
                    ),
                    Step::Listening(address) => {
                        tracing::info!("service running: listening on {address}");
                        set_status(status, ServiceState::Running, 0, ServiceExitCode::NO_ERROR)
                    }
                    Step::Draining(checkpoint) => {
                        if checkpoint == 1 {
                            tracing::info!("service stopping: draining");
                        }
                        let state = ServiceState::StopPending;
                        set_status(status, state, checkpoint, ServiceExitCode::NO_ERROR)
                    }
                }))
            });

        let exit_code = match served {
            Ok(summary) => {
                tracing::info!(
                    "service stopped: {} connections, {} requests answered, {} connections cut",
                    summary.connections,
                    summary.requests,
                    summary.cut
                );
                ServiceExitCode::NO_ERROR
            }
            Err(failure) => {
                tracing::error!("service stopped: {failure}");
                ServiceExitCode::ServiceSpecific(failure.exit_code())
            }
        };
        set_status(status, ServiceState::Stopped, 0, exit_code);
        Ok(())
    }

    /// Tells the SCM the service's state; a refusal is logged.
    fn set_status(
        status: ServiceStatusHandle,
        state: ServiceState,
        checkpoint: u32,
        exit_code: ServiceExitCode,
    ) {
        let (controls_accepted, wait_hint) = match state {
            ServiceState::Running => (
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
                Duration::ZERO,
            ),
            ServiceState::StartPending => (ServiceControlAccept::empty(), START_WAIT_HINT),
            ServiceState::StopPending => (ServiceControlAccept::empty(), STOP_WAIT_HINT),
            _ => (ServiceControlAccept::empty(), Duration::ZERO),
        };
        let set = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted,
            exit_code,
            checkpoint,
            wait_hint,
            process_id: None,
        });
        if let Err(e) = set {
            tracing::error!("SetServiceStatus({state:?}): {}", chain(&e));
        }
    }

    /// Logs to `file` (appended), or to stderr.
    fn init_logging(file: Option<&Path>) -> std::io::Result<()> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "pipeserve=info,windows_service=info".into());
        let logs = tracing_subscriber::fmt().with_env_filter(filter);
        match file {
            Some(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                logs.with_ansi(false).with_writer(Mutex::new(file)).init();
            }
            None => logs
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
        }
        Ok(())
    }

    // --- The foreground run and the SCM commands. ---

    fn console(args: &Args) -> i32 {
        if let Err(e) = init_logging(args.log.as_deref()) {
            eprintln!("windows_service: log file: {e}");
            return 1;
        }
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let served = runtime().and_then(|runtime| {
            runtime.block_on(serve(args, ctrl_c, |step| match step {
                Step::Bound => {}
                Step::Listening(address) => {
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "listening on {address}").unwrap();
                    stdout.flush().unwrap();
                }
                Step::Draining(1) => eprintln!("windows_service: Ctrl-C: draining"),
                Step::Draining(_) => {}
            }))
        });
        match served {
            Ok(summary) => {
                eprintln!(
                    "windows_service: shut down: {} connections, {} requests answered, {} connections cut",
                    summary.connections, summary.requests, summary.cut
                );
                0
            }
            Err(failure) => {
                eprintln!("windows_service: {failure}");
                1
            }
        }
    }

    /// Registers this executable as the service: own process, demand start.
    fn install(args: &Args) -> Result<(), Box<dyn Error>> {
        let access = ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE;
        let manager = ServiceManager::local_computer(None::<&str>, access)?;
        let executable_path = std::env::current_exe()?;
        let mut launch_arguments: Vec<OsString> = vec![
            "run".into(),
            "--service".into(),
            args.service.clone().into(),
            "--name".into(),
            args.name.clone().into(),
        ];
        for who in &args.allow {
            launch_arguments.extend(["--allow".into(), who.to_string().into()]);
        }
        if let Some(log) = &args.log {
            // A service starts in the system directory: the path must be absolute.
            launch_arguments.extend(["--log".into(), std::path::absolute(log)?.into()]);
        }
        let info = ServiceInfo {
            name: args.service.clone().into(),
            display_name: format!("pipeserve echo ({})", args.name).into(),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::OnDemand,
            error_control: ServiceErrorControl::Normal,
            executable_path,
            launch_arguments,
            dependencies: Vec::new(),
            account_name: None, // LocalSystem
            account_password: None,
        };
        let service = manager.create_service(&info, ServiceAccess::CHANGE_CONFIG)?;
        service.set_description("Length-delimited echo over a named pipe (pipeserve example)")?;
        println!(
            "installed service {}: serves pipe {}; start it with `sc start {}`",
            args.service, args.name, args.service
        );
        Ok(())
    }

    /// Stops the service if it runs (waiting for it to drain) and deletes it.
    fn uninstall(args: &Args) -> Result<(), Box<dyn Error>> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
        let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
        let service = manager.open_service(&args.service, access)?;
        let mut status = service.query_status()?;
        if status.current_state != ServiceState::Stopped {
            if status.current_state != ServiceState::StopPending {
                service.stop()?;
            }
            let deadline = std::time::Instant::now() + DRAIN_TIMEOUT + STOP_WAIT_HINT;
            while status.current_state != ServiceState::Stopped {
                if std::time::Instant::now() > deadline {
                    return Err(format!("{} did not stop: {status:?}", args.service).into());
                }
                std::thread::sleep(Duration::from_millis(100));
                status = service.query_status()?;
            }
            let exit_code = match status.exit_code {
                ServiceExitCode::Win32(code) => code.to_string(),
                ServiceExitCode::ServiceSpecific(code) => format!("service-specific {code}"),
            };
            println!("stopped service {}: exit code {exit_code}", args.service);
        }
        service.delete()?;
        println!("uninstalled service {}", args.service);
        Ok(())
    }

    /// An error and its sources; for windows-service's own, which says only
    /// "IO error in winapi call", the OS error.
    fn chain(mut e: &(dyn Error + 'static)) -> String {
        if let Some(windows_service::Error::Winapi(os)) = e.downcast_ref() {
            e = os;
        }
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(e) = source {
            text += &format!(": {e}");
            source = e.source();
        }
        text
    }
}
