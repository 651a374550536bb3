//! `live-ai`: settings → telemetry → app → serve until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use live_ai::config::settings::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    // `.env` fills in what the environment does not set; a missing file is fine.
    let _ = dotenvy::dotenv();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("live-ai: {error}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match live_ai::telemetry::init(settings.log_format, &settings.telemetry) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("live-ai: {error} (OTEL_EXPORTER_OTLP_ENDPOINT)");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::new(settings.host, settings.port);
    let listener = match listen(addr) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("live-ai: cannot listen on {addr}: {error} (set HOST/PORT)");
            return ExitCode::from(1);
        }
    };
    let state = match live_ai::build_state(settings, CancellationToken::new()).await {
        Ok(state) => state,
        Err(error) => {
            eprintln!("live-ai: {error}");
            return ExitCode::from(2);
        }
    };
    let local = listener.local_addr().expect("a bound listener has an address");
    tracing::info!(
        provider = state.manager.engine().provider().name(),
        model = state.manager.engine().provider().model(),
        streaming = state.settings.streaming_enabled,
        backend = state.settings.streaming_backend.as_str(),
        "listening on http://{local}"
    );
    let flush_patience = state.settings.shutdown_timeout;
    let served = live_ai::run(listener, state, shutdown_signal()).await;
    // The last spans and metrics leave before the process does, within the
    // shutdown timeout.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown(flush_patience)).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("live-ai: server error: {error}");
            ExitCode::from(1)
        }
    }
}

/// Connections the kernel may queue before `accept`: a class pressing "Make quiz"
/// at once is a burst of thousands, and the default (128) drops their SYNs, each
/// costing its client a one-second retransmit.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
