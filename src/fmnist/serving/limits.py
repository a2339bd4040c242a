"""What one connection, one request and the server's work may cost (server.py enforces them; the docs'
reliability page lists them). Plain numbers, importable without the server's libraries.

- a connection: the whole request must arrive within the request timeout of the connection (or of the
  previous response): slow, idle and half-open clients are dropped (one log line each); up to
  MAX_CONNECTIONS at once (bounded by the file descriptors, raised to the hard limit; ~5 KB each);
- a request: MAX_BYTES of body, MAX_FILES images, each decoded to at most data/photos.MAX_PIXELS and shrunk
  at once, at most MAX_DECODES decoding at a time (or the cores, if fewer); all bodies in memory together at
  most BODY_BUDGET bytes;
- the work: at most WORK_QUEUE images admitted (decoding or waiting for the model); past it, 503 with
  Retry-After.
"""

MAX_BYTES = 5 * 1024 * 1024
MAX_FILES = 32
MAX_DECODES = 4  # decoding is the memory-hungry step (up to ~70 MB an image): the cores, at most this many
BODY_BUDGET = 256 * 1024 * 1024  # request bodies held in memory at once, all connections together
WORK_QUEUE = 1024  # images admitted and not yet answered; past this, 503 + Retry-After
REQUEST_TIMEOUT_S = 30  # a request's deadline (--request-timeout): to arrive whole; on Ray Serve, end to end
MAX_CONNECTIONS = 10_000  # open connections held at once (file descriptors permitting)
INLINE_DECODE_BYTES = 16 * 1024  # uploads this small, of at most INLINE_DECODE_PIXELS, decode on the event
INLINE_DECODE_PIXELS = 256 * 256  # loop (a thread hop costs more than decoding them: ~0.3 ms)
