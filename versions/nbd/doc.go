// Package nbd is a server for the Network Block Device protocol, as
// specified in NetworkBlockDevice/nbd doc/proto.md ("The NBD protocol").
// backy uses it to serve stored versions as block devices (`backy nbd`),
// but the package is protocol only: it knows nothing of backy's stores
// and serves whatever the Exports and Export interfaces provide.
//
// # Usage
//
//	srv := nbd.NewServer(exports, nbd.Options{Logger: log})
//	err := srv.Serve(ctx, listener) // until ctx is cancelled
//
// Each connection runs its handshake, then one goroutine reads requests
// and up to Options.Workers goroutines handle them; replies may go out of
// order (matched by handle, as "Transmission" allows) and each is written
// whole under a mutex. A panic while serving a connection is recovered,
// logged and ends only that connection.
//
// # Implemented
//
// Handshake ("Fixed newstyle negotiation", "Option types", "Option reply
// types"):
//   - fixed newstyle only: the server sends NBDMAGIC, IHAVEOPT and
//     NBD_FLAG_FIXED_NEWSTYLE|NBD_FLAG_NO_ZEROES; a client without
//     NBD_FLAG_C_FIXED_NEWSTYLE, or with unknown client flags, is
//     disconnected ("Client flags": the server MUST drop the connection
//     on unknown flags);
//   - NBD_OPT_EXPORT_NAME (size, transmission flags and, unless the client
//     set NBD_FLAG_C_NO_ZEROES, 124 zero bytes; failures end the session,
//     since this option cannot return an error), NBD_OPT_ABORT (ACK, then
//     close), NBD_OPT_LIST (one NBD_REP_SERVER per export, name then
//     description), NBD_OPT_STARTTLS, NBD_OPT_INFO and NBD_OPT_GO,
//     NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT and
//     NBD_OPT_SET_META_CONTEXT;
//   - NBD_OPT_INFO/GO always answer NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE
//     (minimum 1, preferred ExportInfo.BlockSize rounded down to a power of
//     two in [512, MaxRequest] or 4096, maximum MaxRequest: the spec lets a
//     server send unrequested information, and our maximum is below the
//     default "unlimited"), NBD_INFO_NAME and NBD_INFO_DESCRIPTION when
//     requested; unknown requests are ignored. No zero padding follows the
//     ACK of NBD_OPT_GO;
//   - the one metadata context is base:allocation ("The base: metadata
//     namespace"). LIST with no query, "base:" or "base:allocation" returns
//     it (ID 0, as "SHOULD be set to zero"); SET selects it for
//     "base:allocation" (ID 1) and ignores "base:" and unknown leaves and
//     namespaces, as the spec requires. A query without a namespace is
//     NBD_REP_ERR_INVALID; both options need structured replies first
//     (NBD_REP_ERR_INVALID otherwise) and an existing export
//     (NBD_REP_ERR_UNKNOWN);
//   - unknown options (including NBD_OPT_PEEK_EXPORT and
//     NBD_OPT_EXTENDED_HEADERS) get NBD_REP_ERR_UNSUP and the session goes
//     on; malformed ones (bad lengths, strings with NUL or over 4096 bytes,
//     data where none is allowed) get NBD_REP_ERR_INVALID. Option data is
//     limited to 64 KiB, checked before anything is allocated: longer
//     options are read and discarded in small pieces and refused with
//     NBD_REP_ERR_TOO_BIG (an oversized NBD_OPT_EXPORT_NAME closes the
//     connection). The whole handshake must end within
//     Options.HandshakeTimeout.
//
// TLS ("TLS support"): with Options.TLS the server offers
// NBD_OPT_STARTTLS (SELECTIVETLS mode, every export allowed either way);
// with RequireTLS as well it runs in FORCEDTLS mode: every option but
// STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD, and
// NBD_OPT_EXPORT_NAME before TLS ends the session. Without a TLS config
// STARTTLS gets NBD_REP_ERR_POLICY. A successful STARTTLS forgets the
// structured-reply and metadata negotiation made before it, as the spec
// requires; a failed TLS handshake ends the session.
//
// Transmission ("Transmission", "Request types", "Error values"):
//   - transmission flags: HAS_FLAGS; SEND_FLUSH, SEND_FUA, SEND_TRIM and
//     SEND_WRITE_ZEROES on writable exports; READ_ONLY and CAN_MULTI_CONN
//     on read-only ones (a read-only export looks the same from every
//     connection; writable ones do not claim it); SEND_DF when structured
//     replies are negotiated;
//   - NBD_CMD_READ, WRITE (FUA: Export.Flush before the reply), DISC (the
//     outstanding requests are finished, then the connection is closed and
//     Export.Close(nil) called), FLUSH, TRIM, WRITE_ZEROES (punch unless
//     NBD_CMD_FLAG_NO_HOLE), BLOCK_STATUS (only with structured replies and
//     base:allocation set for the same export name; REQ_ONE gives exactly
//     one descriptor no longer than the request; descriptors are clipped to
//     the request and equal neighbours merged; an Export that reports
//     nothing usable is answered with one status-0 descriptor, which the
//     spec always allows);
//   - simple replies without structured replies; with them, READ answers
//     with NBD_REPLY_TYPE_OFFSET_DATA chunks, plus OFFSET_HOLE chunks for
//     runs of at least 4 KiB that Export.Extents reports as reading zeroes
//     (those are not read), the last chunk carrying NBD_REPLY_FLAG_DONE;
//     with NBD_CMD_FLAG_DF one OFFSET_DATA chunk (holes as zeroes). Errors
//     are NBD_REPLY_TYPE_ERROR chunks with a message, READ failures
//     NBD_REPLY_TYPE_ERROR_OFFSET chunks at the failed part (data read
//     before it is still delivered). Successful replies without payload
//     are simple replies, which the spec allows;
//   - checks, in order: unknown command → EINVAL; write, trim, write-zeroes
//     or flush on a read-only export → EPERM (the Export is not called);
//     flags not valid for the command or not negotiated (including
//     NBD_CMD_FLAG_FAST_ZERO, which is not offered) → EINVAL; FLUSH with a
//     nonzero offset or length → EINVAL; a range beyond the end (offset +
//     length overflow included) → ENOSPC for WRITE and WRITE_ZEROES,
//     EINVAL otherwise; READ/WRITE longer than MaxRequest → EINVAL
//     (EOVERFLOW for a READ with DF); BLOCK_STATUS of length 0 → EINVAL.
//     Zero-length READ, WRITE, TRIM and WRITE_ZEROES succeed without
//     calling the Export;
//   - a refused WRITE's payload is read and discarded without being
//     buffered, so the connection stays usable; a WRITE longer than both
//     MaxRequest and 2^25 bytes ends the connection instead ("Block size
//     constraints": payloads below 2^25 SHOULD NOT be deemed a denial of
//     service, larger ones MAY be met with a hard disconnect). A request
//     with a bad magic also ends it, since the stream cannot be
//     resynchronised;
//   - no request allocates more than MaxRequest: buffers come from pools,
//     and the reader takes a worker slot before reading a WRITE payload,
//     so a connection holds at most Workers payloads.
//
// Errors from an Export are sent as Errno(err). On shutdown (Serve's ctx
// cancelled) the in-flight requests see a cancelled context, which maps to
// NBD_ESHUTDOWN as "Terminating the transmission phase" recommends;
// replies still pending after 10 seconds are dropped and every
// connection is closed, with Export.Close called exactly once for each
// opened export.
//
// Limits (limits.go): at most Options.MaxConns sessions (connections past
// the handshake), Options.MaxHandshakes connections in the handshake and
// Options.MaxConnsPerClient connections per remote IP address; a handshake
// lasts at most Options.HandshakeTimeout (10 s by default). A new
// connection beyond the handshake or per-client limit takes the place of
// the oldest handshaking connection of its own client, or of the client
// holding the most handshake slots, so idle sockets cannot lock other
// clients out; it is refused only when the sessions are all taken.
// Warnings about a client (protocol errors, refused requests, refused or
// evicted connections) are logged at most once per Options.WarnInterval
// per client, the next one counting those held back ("suppressed");
// connections that open no export are logged at Debug only.
//
// # Not implemented
//
//   - the oldstyle and non-fixed newstyle negotiations ("Oldstyle
//     negotiation" is no longer supported by the reference server either);
//   - extended headers (NBD_OPT_EXTENDED_HEADERS, 64-bit lengths): the
//     option is answered NBD_REP_ERR_UNSUP, so clients fall back;
//   - NBD_CMD_CACHE (not advertised; answered EINVAL), NBD_CMD_RESIZE and
//     NBD_FLAG_SEND_FAST_ZERO (the Export interface cannot tell whether
//     zeroing is fast); NBD_FLAG_ROTATIONAL is never set;
//   - metadata contexts other than base:allocation (for example
//     qemu:dirty-bitmap);
//   - NBD_REP_ERR_BLOCK_SIZE_REQD: block sizes are advertised but not
//     required, and unaligned requests are accepted (minimum block size 1);
//   - TLS client-certificate policy and TLS-only exports: whatever
//     Options.TLS demands of clients applies to the whole connection.
package nbd
