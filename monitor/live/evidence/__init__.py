"""Evidence of flagged windows (``serve.evidence``) and the streams' thumbnails
(``serve.ui.thumbnails``): the sampled frames each stream's next window needs, kept
downscaled and JPEG-compressed in bounded memory (:mod:`~monitor.live.evidence.frames`),
each stream's latest small frame (:mod:`~monitor.live.evidence.thumbs`), both filled off
the event loop by a pool of threads (:mod:`~monitor.live.evidence.capture`), and the
records written for alerts by a background writer with retention
(:mod:`~monitor.live.evidence.writer`); :mod:`~monitor.live.evidence.recorder` is what
the stream manager calls. May use ``monitor.media`` (stills, clip encoding) and the base;
never the engine, the manager or the API, which use it."""
