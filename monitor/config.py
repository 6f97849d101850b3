"""Settings: one pydantic-settings ``Settings`` with one section per concern.

Sources, highest priority first: explicit keyword arguments, environment
variables ``RESTRAV_<SECTION>__<FIELD>`` (e.g. ``RESTRAV_MODEL__DEVICE=cuda``),
then an optional YAML file given to :func:`load_settings`. Unknown keys are
errors (``extra="forbid"``), so a typo never silently falls back to a default.

Nothing here reads the environment at import time; :func:`load_settings` does.

The module is kept whole, however long: every key a user can set is in this one
file, with its default, bounds and description (the README's tables follow it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError
from .redis_conn import Durability, check_redis_url

DEFAULT_FORMATS: tuple[str, ...] = (
    "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "flv", "mpegts", "mpeg",
    "asf", "ogg", "nut", "mxf", "ivf", "obu", "dv", "gif", "yuv4mpegpipe",
    "h264", "hevc", "vvc", "m4v", "mpegvideo", "av1", "vc1", "mjpeg",
    "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif_pipe",
    "rm", "wtv", "smjpeg", "swf",
    # audio-only containers: allowed so that they are answered "no video stream"
    "wav", "mp3", "flac", "aac", "ac3", "aiff", "amr", "w64",
)
"""FFmpeg demuxers allowed for files by default (``decode.allowed_formats``)."""

DEFAULT_MODEL = "facebook/dinov2-small"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ModelDtype = Literal[
    "float32", "tf32", "float16-mixed", "bfloat16-mixed", "float16", "bfloat16"
]
MODEL_DTYPES: tuple[str, ...] = (
    "float32", "tf32", "float16-mixed", "bfloat16-mixed", "float16", "bfloat16"
)
"""Model precisions (ModelSettings.dtype)."""


class ModelSettings(_Section):
    """Backbone: where it loads from and how it runs."""

    ref: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face id, local transformers directory, torch.hub checkpoint "
        "file (dinov2_vits14_pretrain.pth layout) or directory holding one.",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: ModelDtype = Field(
        "float32",
        description="Model precision: float32; tf32 (float32 with TF32 matmuls on CUDA); "
        "float16-mixed / bfloat16-mixed (autocast: matmuls in half precision, LayerNorm "
        "and softmax in float32); float16 / bfloat16 (the whole model cast). BENCHMARKS.md "
        "gives each one's speed and feature drift.",
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off",
        description="torch.compile mode for the model; reduce-overhead adds CUDA graphs. "
        "Batches are padded to fixed sizes (powers of two up to batch_size) so each "
        "size compiles once.",
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Frames per forward pass.")
    image_size: int = Field(224, ge=14, le=1022, description="Square input side, px.")
    normalize: Literal["none", "imagenet"] = Field(
        "none", description="Input normalisation; SPEC says none (paper and code agree)."
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op CPU threads of torch and of the runtime backends (None: torch's "
        "default; a runtime uses the process's cores).",
    )
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "torch",
        description="Backbone runtime: torch (eager, as always); onnxruntime or openvino "
        "(exported graph, CPU only, the cpu-fast extra); auto (the fastest installed runtime "
        "whose measured feature drift is within 1 %, timed once on this machine and cached "
        "beside the graphs; torch on CUDA). See BENCHMARKS.md.",
    )
    backend_mode: Literal["float32", "bfloat16", "int8"] = Field(
        "float32",
        description="A runtime backend's precision: float32 (exact), bfloat16 (openvino, "
        "CPUs with AVX512_BF16/AMX), int8 (onnxruntime, needs calibration frames). Reduced "
        "modes move the features (drift in `restrav doctor` and BENCHMARKS.md); auto never "
        "picks them.",
    )
    graph_cache: Path | None = Field(
        None, description="Where exported graphs are cached (None: ~/.cache/restrav/graphs)."
    )


class DecodeSettings(_Section):
    """Limits and timeouts for decoding files and URLs."""

    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    max_file_bytes: int = Field(2 * 1024**3, ge=1)
    max_duration_s: float = Field(4 * 3600.0, gt=0)
    max_pixels: int = Field(8192 * 8192, ge=1, description="Width x height bound.")
    threads: int = Field(0, ge=0, description="FFmpeg decode threads (0: auto).")
    max_frames: int = Field(
        2_000_000, ge=2, description="Decoded frames per file, counted while decoding."
    )
    allowed_formats: tuple[str, ...] = Field(
        DEFAULT_FORMATS,
        min_length=1,
        description="FFmpeg demuxers a file may use. HLS playlists (hls), ffconcat lists "
        "(concat) and SDP (sdp) open the files and URLs they name and are refused unless "
        "listed here.",
    )


class ClassifierSettings(_Section):
    """Which classifier artifact scores windows."""

    path: Path | None = Field(
        None,
        description="Classifier artifact directory. Unset or 'default': the bundled "
        "published classifier (restrav-vidprom-mlp); 'none': features only (P(AI) null).",
    )


class RedisSettings(_Section):
    """Redis connection (None: no Redis). ``url``: one server (``redis://``,
    ``rediss://``, ``unix://``) or Sentinel (``redis+sentinel://`` /
    ``rediss+sentinel://``), see :mod:`monitor.redis_conn`; checked when the settings
    load, the URL never quoted in the error."""

    url: SecretStr | None = None
    connect_timeout_s: float = Field(2.0, gt=0)
    wait_replicas: int = Field(
        0, ge=0, description="Replicas that must acknowledge (WAIT) a job enqueued by submit, "
        "a job's answer and a lease grant before they count as done; 0: off (one Redis). "
        "With Sentinel and one replica: 1.")
    wait_timeout_s: float = Field(
        1.0, gt=0, description="How long such a write waits for its replicas; fewer "
        "acknowledgements by then: not done (retried, or the lease not taken).")
    wait_scores: bool = Field(
        True, description="With wait_replicas > 0, serve's score and alert writes wait "
        "as well: a batch not acknowledged stays buffered and is written again (a fenced "
        "score already stored is not repeated). false: they do not wait, and a failover "
        "may lose the last scores written before it.")

    def durability(self) -> Durability:
        """The WAIT these settings ask for."""
        return Durability(self.wait_replicas, max(1, int(self.wait_timeout_s * 1000)))

    def score_durability(self) -> Durability:
        """The WAIT after serve's score writes (off unless ``wait_scores``)."""
        return self.durability() if self.wait_scores else Durability()

    @field_validator("url")
    @classmethod
    def _known_form(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            try:
                check_redis_url(v.get_secret_value())
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return v


class QueueSettings(_Section):
    """The Redis Streams clip queue: consumer group, leases, limits on what a job may name."""

    group: str = Field("workers", min_length=1, description="Consumer group of the workers.")
    concurrency: int = Field(
        1, ge=1, le=64, description="Jobs a worker scores at once (it pulls no more than this)."
    )
    visibility_timeout_s: float = Field(
        60.0, gt=0, description="A job whose worker stopped renewing it for this long is "
        "handed to another worker (XAUTOCLAIM)."
    )
    heartbeat_interval_s: float = Field(
        5.0, gt=0, description="Heartbeat and lease renewal period; keep well under the "
        "visibility timeout."
    )
    reclaim_interval_s: float = Field(5.0, gt=0, description="How often an idle worker reclaims.")
    block_ms: int = Field(1000, ge=1, description="XREADGROUP BLOCK while waiting for jobs.")
    max_deliveries: int = Field(
        3, ge=1, description="Attempts before a job moves to the dead-letter stream."
    )
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="TTL of restrav:results:{job_id}.")
    results_maxlen: int = Field(100_000, ge=1, description="Cap of the results stream (~).")
    dead_maxlen: int = Field(100_000, ge=1, description="Cap of the dead-letter stream (~).")
    max_queue_length: int = Field(
        1_000_000, ge=1, description="`restrav submit` refuses to enqueue beyond this many entries."
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, wait this long for current jobs, then release them."
    )
    allow_local_paths: bool = Field(True, description="Accept local file paths as job sources.")
    local_roots: tuple[Path, ...] = Field(
        (), description="If set, local paths must lie under one of these directories."
    )
    allowed_url_schemes: tuple[str, ...] = Field(
        (), description="URL schemes a job may use (http, https); empty: no URLs."
    )
    allowed_url_hosts: tuple[str, ...] = Field(
        (), description="If set, URL hosts must be one of these (exact names)."
    )
    allow_private_addresses: bool = Field(
        False, description="Allow URLs that resolve to loopback, private or link-local addresses."
    )
    max_download_bytes: int = Field(512 * 1024**2, ge=1, description="Bound on a URL download.")
    download_timeout_s: float = Field(30.0, gt=0, description="Connect/read timeout of a download.")
    download_deadline_s: float = Field(
        300.0, gt=0, description="Wall time of a whole download, redirects included: "
        "past it the job is answered `timeout`."
    )
    max_hop: int = Field(1000, ge=1, description="Largest `hop` option a job may ask for.")
    job_timeout_s: float = Field(
        900.0, ge=0, description="Wall time one job may take (download excluded) before it "
        "is answered `timeout`; 0: no limit."
    )
    max_rss_bytes: int = Field(
        8 * 1024**3, ge=0, description="A job whose decoding takes the worker process past "
        "this resident size is answered `too_large` (checked while decoding); 0: no limit."
    )
    classifiers: dict[str, Path] = Field(
        default_factory=dict,
        description="Named classifier artifacts a job may pick with options.classifier "
        "('none' is reserved: features only).",
    )

    @model_validator(mode="after")
    def _lease_renewed_in_time(self) -> QueueSettings:
        if self.heartbeat_interval_s * 2 > self.visibility_timeout_s:
            raise ValueError(
                "queue.heartbeat_interval_s must be at most half of queue.visibility_timeout_s "
                "(leases are renewed on each heartbeat)"
            )
        return self
class WebRTCSettings(_Section):
    """WebRTC: the WHIP endpoint for publishers and WHEP pulls from media servers."""

    whip_enabled: bool = Field(True, description="Mount POST /whip/{stream_id} and /publish.")
    whip_token: SecretStr | None = Field(
        None,
        description="Bearer token WHIP publishers present (None: the API token; with "
        "neither, every publisher gets 401).",
    )
    whip_any_stream: bool = Field(
        False,
        description="Accept publishers on any free, well-formed stream id, creating the "
        "stream for the session's lifetime (else only streams of kind whip declared in "
        "serve.streams or through the API accept publishers).",
    )
    max_sessions: int = Field(
        8,
        ge=1,
        le=1024,
        description="WHIP publisher sessions at once (WHEP pulls are bounded by the streams).",
    )
    max_offer_bytes: int = Field(64 * 1024, ge=256, le=1024**2, description="SDP offer bound.")
    connect_timeout_s: float = Field(
        15.0, gt=0, description="A session must deliver its first frame within this."
    )
    idle_timeout_s: float = Field(
        10.0, gt=0, description="A publisher silent this long is disconnected and cleaned up."
    )
    buffer_frames: int = Field(
        8, ge=1, le=1024, description="Decoded frames held per WHIP track (keeps the latest)."
    )
    video_codecs: tuple[Literal["VP8", "H264"], ...] = Field(
        (), description="Preferred receive codecs, in order (empty: the offer's order)."
    )
    start_bitrate_kbps: int = Field(
        1500, ge=0, le=100_000, description="x-google-start/min-bitrate hint in answers (0: none)."
    )
    cors_origins: tuple[str, ...] = Field(
        ("*",), description="Origins allowed to call the WHIP endpoint from a browser."
    )
    whep_timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of WHEP requests.")
    max_pixels: int = Field(
        3840 * 2160, ge=1, description="Frames larger than this are dropped (counted)."
    )


STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Stream ids: 1-64 characters, letters, digits, ``_ . -`` (safe in Redis keys and labels)."""
MAX_URL_CHARS = 2048


class StreamSpec(BaseModel):
    """One live feed the streaming service should run (config file or control API).

    ``kind`` picks the source implementation (``rtsp``, ``http``, ``file`` and
    whatever :func:`monitor.media.sources.register_source_kind` added); None infers it
    from the URL scheme. ``credentials_ref`` names an entry of
    ``serve.credentials`` (user and password kept out of the URL and out of
    Redis). Credentials written inline in ``url`` work but are never persisted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=STREAM_ID_PATTERN)
    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    kind: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    paused: bool = False
    hop: int | None = Field(None, ge=1, le=1000, description="Score every k samples.")
    transport: Literal["tcp", "udp"] | None = Field(None, description="RTSP transport.")
    loop: bool = Field(False, description="File sources: play the file again at its end.")
    credentials_ref: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    priority: int = Field(
        0, ge=-100, le=100,
        description="Under overload streams of higher priority keep running; lower ones "
        "yield whole windows first.",
    )
    evidence: bool = Field(
        True, description="Keep evidence of this stream's alerts (with serve.evidence.dir set).",
    )


class StreamCredentials(_Section):
    """User and password injected into a stream URL at connect time (never stored)."""

    username: str = Field(max_length=256)
    password: SecretStr


class BackoffSettings(_Section):
    """Reconnect delays: full jitter between ``floor_s`` and an exponential ceiling."""

    floor_s: float = Field(0.5, gt=0)
    cap_s: float = Field(30.0, gt=0)
    reset_after_s: float = Field(30.0, gt=0, description="Stable run that resets the backoff.")


class ServeSourceSettings(_Section):
    """Live source behaviour: transports, timeouts, watchdog, gap detection, buffers."""

    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    stall_after_s: float = Field(5.0, gt=0, description="No frame for this long: stalled.")
    stall_reconnect_s: float = Field(
        15.0, gt=0, description="Stalled this long: close the source and reconnect."
    )
    gap_tolerance_s: float = Field(
        0.5, gt=0, description="A pts jump larger than this ends the window."
    )
    buffer_frames: int = Field(8, ge=1, le=1024, description="Decoded frames held per stream.")
    hls_segment_s: float = Field(
        6.0, gt=0, le=60,
        description="HLS delivers a segment at once: HLS streams hold at least this many "
        "seconds of frames (at the stream's rate, up to 1024) instead of buffer_frames.",
    )
    hls_buffer_mib: int = Field(
        512, ge=16, le=16384,
        description="Memory bound of an HLS stream's segment buffer (decoded 4:2:0 frames, "
        "1.5 bytes a pixel): a 1080p30 6 s segment needs about 534 MiB; beyond it frames are "
        "dropped (counted) and the window ends. Lower it, or shorten the segments, with "
        "many high-resolution HLS streams.",
    )
    backoff: BackoffSettings = BackoffSettings()
    allowed_schemes: tuple[str, ...] = ("rtsp", "rtsps", "http", "https", "file")
    decode_backend: Literal["auto", "cpu", "nvdec"] = Field(
        "auto",
        description="Where RTSP/HTTP/file streams decode: nvdec (the GPU's decoder through "
        "FFmpeg; frames stay on the device), cpu (PyAV), auto (nvdec when the model runs on "
        "CUDA and FFmpeg has CUDA; serve resolves it at start). A stream that cannot open "
        "the GPU decoder decodes on the CPU (logged).",
    )
    decode_device: int = Field(0, ge=0, description="The CUDA device index NVDEC decodes on.")


class EngineSettings(_Section):
    """The device worker: micro-batching across streams and overload control."""

    max_batch: int | None = Field(
        None, ge=1, le=1024,
        description="Frames per forward pass; None: derived from the measured batch cost "
        "(16 to 256) on a GPU, model.batch_size on a CPU (the CPU's full rate is reached "
        "there; larger batches only delay scores).",
    )
    max_wait_ms: float = Field(10.0, ge=0, le=10_000)
    queue_samples: int | None = Field(
        None, ge=1, le=100_000,
        description="Samples queued, all streams; None: derived from the batch limit and "
        "the number of streams (0.5 s of every stream's samples, at least 256).",
    )
    shedding: Literal["rotate", "skip"] = Field(
        "rotate",
        description="Under overload: rotate (whole streams take turns, yielding whole "
        "windows) or skip (each stream skips a window when its backlog is full).",
    )
    rotation_windows: int = Field(
        1, ge=1, le=1000,
        description="rotate: windows a stream runs beyond its first before it hands its "
        "turn to a waiting stream of the same priority.",
    )
    target_utilisation: float = Field(
        0.95, gt=0, le=1,
        description="rotate: share of the measured device capacity the running streams use.",
    )
    max_backlog_per_stream: int = Field(
        24, ge=1, le=10_000, description="A stream with more samples queued skips a window."
    )
    hop: int = Field(1, ge=1, le=1000, description="Score every k samples (1: every sample).")
    zero_step_eps: float = Field(1e-6, ge=0)
    convert_threads: int = Field(
        4, ge=1, le=64, description="Threads converting sampled frames to RGB (GIL released)."
    )
    pixel_path: Literal["auto", "rgb", "yuv"] = Field(
        "auto",
        description="rgb: frames converted to RGB on the CPU; yuv: 4:2:0 planes uploaded "
        "(1.5 bytes/pixel) and converted and resized on the device, same pixels; "
        "auto: yuv on CUDA, rgb on the CPU.",
    )


class AlertSettings(_Section):
    """Alert hysteresis on P(AI): enter above ``enter``, leave below ``leave``."""

    enter: float = Field(0.8, ge=0, le=1)
    leave: float = Field(0.6, ge=0, le=1)
    min_duration_s: float = Field(2.0, ge=0, description="Above `enter` this long to alert.")


class EvidenceSettings(_Section):
    """What is kept of a flagged window: its 24 sampled frames as an MP4, a contact sheet
    and a JSON record, in ``dir`` (None: no evidence is kept, no frame is retained).

    Frames are retained in memory per stream only as long as a window needs them
    (``frames_per_stream``), downscaled to ``frame_width`` and JPEG-compressed, bounded by
    ``stream_bytes`` per stream and ``memory_bytes`` in all (records waiting to be written
    hold their window's frames beyond these: at most ``queue_records`` x 24). On disk,
    records older than ``max_age_s`` and the oldest beyond ``max_disk_bytes`` are
    deleted."""

    dir: Path | None = Field(None, description="Where evidence records go (None: off).")
    low_threshold: float | None = Field(
        None, ge=0, le=1,
        description="Also keep every window with P(AI) at or above this (None: alert starts "
        "only).",
    )
    frame_width: int = Field(240, ge=16, le=1920, description="Width of kept frames, px.")
    jpeg_quality: int = Field(75, ge=10, le=95, description="JPEG quality of kept frames.")
    frames_per_stream: int = Field(
        48, ge=24, le=1000, description="Sampled frames kept per stream (>= one window)."
    )
    stream_bytes: int = Field(
        1024**2, ge=16 * 1024, description="Bound on one stream's kept frames, bytes."
    )
    memory_bytes: int = Field(
        64 * 1024**2, ge=64 * 1024, description="Bound on all kept frames, bytes."
    )
    max_age_s: float = Field(7 * 24 * 3600.0, gt=0, description="Records older are deleted.")
    max_disk_bytes: int = Field(
        1024**3, ge=64 * 1024, description="Oldest records are deleted beyond this total."
    )
    queue_records: int = Field(
        8, ge=1, le=1000, description="Records waiting to be written; more are dropped."
    )
    capture_queue: int = Field(
        32, ge=1, le=10_000,
        description="Decoded frames waiting to be compressed (each holds its full-size "
        "frame: 32 x 3 MB at 1080p); more are dropped, counted.",
    )
    frames_wait_s: float = Field(
        5.0, gt=0, le=60,
        description="How long a record waits for its window's frames to be compressed.",
    )
    capture_threads: int = Field(
        0, ge=0, le=64,
        description="Threads compressing sampled frames (evidence and thumbnails); 0: half "
        "the CPUs, 1 to 4. One keeps up with about 30-85 streams of 720p.",
    )


class ServeSinkSettings(_Section):
    """Where scores go: Redis (from the redis section) and/or stdout JSON lines."""

    stdout: bool | None = Field(None, description="None: stdout only when Redis is not set.")
    scores_maxlen: int = Field(10_000, ge=1, description="Approximate cap per score stream.")
    events_maxlen: int = Field(100_000, ge=1)
    state_events_burst: int = Field(
        10, ge=0, le=10_000,
        description="State changes a stream may put on restrav:events at once (0: none); "
        "beyond, one more per state_events_refill_s, the rest counted as suppressed.",
    )
    state_events_refill_s: float = Field(
        30.0, gt=0, le=86_400, description="One more state event a stream per this long.",
    )
    buffer_max: int = Field(10_000, ge=1, description="Scores buffered during an outage.")
    write_batch: int = Field(256, ge=1)


class ApiToken(_Section):
    """A named API token: ``viewer`` reads (the page, streams, evidence); ``operator`` also
    adds, replaces, pauses, resumes and removes streams."""

    token: SecretStr = Field(description="The bearer token (at least 16 characters).")
    role: Literal["viewer", "operator"] = "viewer"

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value().strip()) < 16:
            raise ValueError("a named token needs at least 16 characters")
        return v


class ApiSettings(_Section):
    """The HTTP control plane. Control routes need a bearer token: ``token`` (or
    ``token_file``) is an operator token named ``operator``; ``tokens`` adds named
    tokens with roles. Logs name the token, never show it."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: Path | None = Field(None, description="Read the token from this file.")
    tokens: dict[str, ApiToken] = Field(
        default_factory=dict,
        description="Named tokens: name (1-64 of letters, digits, _ . -) -> {token, role}.",
    )
    max_body_bytes: int = Field(16_384, ge=256, le=1_048_576)
    max_streams: int = Field(256, ge=1)
    allow_file_sources: bool = Field(
        False, description="Let API clients add file:// sources (reads server files)."
    )

    @field_validator("tokens")
    @classmethod
    def _token_names(cls, v: dict[str, ApiToken]) -> dict[str, ApiToken]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
                raise ValueError(f"token name {name!r}: 1-64 of letters, digits, _ . -")
        secrets = [t.token.get_secret_value().strip() for t in v.values()]
        if len(set(secrets)) != len(secrets):
            raise ValueError("two named tokens have the same value")
        return v


class UiSettings(_Section):
    """The operator page (``GET /``, ``/ui``) and its live event stream (``/ui/events``)."""

    enabled: bool = Field(True, description="Serve the operator page and its event stream.")
    thumbnails: bool = Field(
        True, description="Keep and serve each stream's latest sampled frame, small (GET "
        "/streams/{id}/thumbnail, the page's rows); off for sites that must not show images: "
        "then no frame is kept for it.",
    )
    thumbnail_width: int = Field(
        160, ge=16, le=1920,
        description="Width of thumbnails, px (with evidence kept for the stream, a thumbnail "
        "is its kept frame: serve.evidence.frame_width).",
    )
    thumbnail_interval_s: float = Field(
        1.0, ge=0.1, le=60, description="At most one thumbnail encoded a stream per interval.",
    )
    thumbnail_stream_bytes: int = Field(
        64 * 1024, ge=1024, description="Bound on one stream's thumbnail, bytes.",
    )
    thumbnail_memory_bytes: int = Field(
        16 * 1024**2, ge=64 * 1024, description="Bound on all thumbnails, bytes.",
    )
    history_s: float = Field(300.0, ge=10, le=3600, description="Timeline span kept per stream.")
    tick_s: float = Field(1.0, ge=0.1, le=10, description="One update message per tick.")
    max_clients: int = Field(50, ge=1, le=1000, description="Event-stream clients at once.")
    client_buffer_messages: int = Field(
        64, ge=2, le=10_000,
        description="Messages queued per client; a client this far behind is dropped.",
    )


class ClusterSettings(_Section):
    """Many `restrav serve` replicas sharing the live streams through Redis leases."""

    enabled: bool = Field(
        False, description="Own streams through leases (needs redis.url); every replica runs "
        "its share of the desired set instead of all of it.",
    )
    replica: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description="This replica's name (None: the host name; Kubernetes: the pod name).",
    )
    capacity_streams: int = Field(64, ge=0, le=100_000, description="Streams it may run.")
    lease_ttl_s: float = Field(10.0, gt=0, description="Lease and heartbeat TTL.")
    renew_interval_s: float = Field(
        3.0, gt=0, description="Renew, heartbeat and assignment interval (< lease_ttl_s / 2)."
    )
    max_moves_per_interval: int = Field(
        2, ge=1, le=1000,
        description="Streams a replica above its fair share releases per interval.",
    )

    @model_validator(mode="after")
    def _renew_in_time(self) -> ClusterSettings:
        if self.renew_interval_s * 2 > self.lease_ttl_s:
            raise ValueError(
                "serve.cluster.renew_interval_s must be at most half of lease_ttl_s "
                "(a lease must survive one late renewal)"
            )
        return self


class ServeSettings(_Section):
    """`restrav serve`: the streaming monitor (streams, sources, engine, sinks, API)."""

    streams: tuple[StreamSpec, ...] = ()
    credentials: dict[str, StreamCredentials] = Field(default_factory=dict)
    source: ServeSourceSettings = ServeSourceSettings()
    engine: EngineSettings = EngineSettings()
    alerts: AlertSettings = AlertSettings()
    sinks: ServeSinkSettings = ServeSinkSettings()
    api: ApiSettings = ApiSettings()
    ui: UiSettings = UiSettings()
    persist_streams: bool = Field(True, description="Keep the desired set in Redis.")
    drain_deadline_s: float = Field(10.0, gt=0)
    cluster: ClusterSettings = ClusterSettings()
    evidence: EvidenceSettings = EvidenceSettings()


class Settings(BaseSettings):
    """All settings of a restrav-monitor process."""

    model_config = SettingsConfigDict(
        env_prefix="RESTRAV_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    model: ModelSettings = ModelSettings()
    decode: DecodeSettings = DecodeSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    redis: RedisSettings = RedisSettings()
    queue: QueueSettings = QueueSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    serve: ServeSettings = ServeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments win over the environment; no .env file is read."""
        return (init_settings, env_settings)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from a YAML file, the environment and ``overrides``.

    The environment overrides the file, ``overrides`` (nested dicts per section)
    override both. Raises :class:`ConfigError` with the offending keys on any
    validation problem.
    """
    file_data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"settings file {path} must hold a mapping at the top level")
        file_data = loaded
    try:
        env_data = Settings().model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, _env_name)) from exc

    def source(loc: tuple[str | int, ...]) -> str:
        for n in range(len(loc), 0, -1):  # a missing key: where its section came from
            if _holds(overrides, loc[:n]):
                return "the command line"
            if _holds(env_data, loc[:n]):
                return _env_name(loc[:n])
            if _holds(file_data, loc[:n]):
                return f"settings file {path}"
        return "the settings"

    try:
        return Settings(**_deep_merge(_deep_merge(file_data, env_data), overrides))
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from exc


def _env_name(loc: tuple[str | int, ...]) -> str:
    return "environment variable RESTRAV_" + "__".join(str(p).upper() for p in loc)


def _holds(data: Any, loc: tuple[str | int, ...]) -> bool:
    """Whether the nested mappings and lists ``data`` have a value at ``loc``."""
    for part in loc:
        in_list = isinstance(data, list | tuple) and isinstance(part, int) and part < len(data)
        if not (in_list or (isinstance(data, dict) and part in data)):
            return False
        data = data[part]
    return True


def _section_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The settings model that holds the key at ``loc`` (None past a non-model field)."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _explain(exc: ValidationError, source: Callable[[tuple[str | int, ...]], str]) -> str:
    """One readable clause per problem: the key, where it came from (file, environment
    variable or command line) and, for an unknown key, the valid keys next to it. Input
    values are never quoted (they may be secrets)."""
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        where = source(loc)
        if err["type"] == "extra_forbidden":
            section = _section_at(loc)
            valid = ", ".join(sorted(section.model_fields)) if section is not None else ""
            parts.append(f"unknown key {key} (from {where})"
                         + (f"; valid keys here: {valid}" if valid else ""))
        else:
            parts.append(f"{key} (from {where}): {err['msg']}")
    return "invalid settings: " + "; ".join(parts)
