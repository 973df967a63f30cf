package nbd

// Wire constants, from NetworkBlockDevice/nbd doc/proto.md. Every value
// is sent big-endian.

// Magic numbers.
const (
	nbdMagic         uint64 = 0x4e42444d41474943 // "NBDMAGIC" (INIT_PASSWD)
	optMagic         uint64 = 0x49484156454F5054 // "IHAVEOPT"
	optReplyMagic    uint64 = 0x0003e889045565a9 // option reply magic
	requestMagic     uint32 = 0x25609513         // NBD_REQUEST_MAGIC
	simpleReplyMagic uint32 = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	structReplyMagic uint32 = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC
)

// Handshake flags (server, 16 bits) and client flags (32 bits).
const (
	flagFixedNewstyle  uint16 = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes       uint16 = 1 << 1 // NBD_FLAG_NO_ZEROES
	flagCFixedNewstyle uint32 = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	flagCNoZeroes      uint32 = 1 << 1 // NBD_FLAG_C_NO_ZEROES
)

// Transmission flags (16 bits).
const (
	flagHasFlags        uint16 = 1 << 0  // NBD_FLAG_HAS_FLAGS
	flagReadOnly        uint16 = 1 << 1  // NBD_FLAG_READ_ONLY
	flagSendFlush       uint16 = 1 << 2  // NBD_FLAG_SEND_FLUSH
	flagSendFUA         uint16 = 1 << 3  // NBD_FLAG_SEND_FUA
	flagRotational      uint16 = 1 << 4  // NBD_FLAG_ROTATIONAL
	flagSendTrim        uint16 = 1 << 5  // NBD_FLAG_SEND_TRIM
	flagSendWriteZeroes uint16 = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	flagSendDF          uint16 = 1 << 7  // NBD_FLAG_SEND_DF
	flagCanMultiConn    uint16 = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	flagSendResize      uint16 = 1 << 9  // NBD_FLAG_SEND_RESIZE
	flagSendCache       uint16 = 1 << 10 // NBD_FLAG_SEND_CACHE
	flagSendFastZero    uint16 = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
)

// Option types.
const (
	optExportName      uint32 = 1  // NBD_OPT_EXPORT_NAME
	optAbort           uint32 = 2  // NBD_OPT_ABORT
	optList            uint32 = 3  // NBD_OPT_LIST
	optPeekExport      uint32 = 4  // NBD_OPT_PEEK_EXPORT (withdrawn)
	optStartTLS        uint32 = 5  // NBD_OPT_STARTTLS
	optInfo            uint32 = 6  // NBD_OPT_INFO
	optGo              uint32 = 7  // NBD_OPT_GO
	optStructuredReply uint32 = 8  // NBD_OPT_STRUCTURED_REPLY
	optListMetaContext uint32 = 9  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaContext  uint32 = 10 // NBD_OPT_SET_META_CONTEXT
	optExtendedHeaders uint32 = 11 // NBD_OPT_EXTENDED_HEADERS (not implemented)
)

// Option reply types.
const (
	repAck              uint32 = 1                // NBD_REP_ACK
	repServer           uint32 = 2                // NBD_REP_SERVER
	repInfo             uint32 = 3                // NBD_REP_INFO
	repMetaContext      uint32 = 4                // NBD_REP_META_CONTEXT
	repFlagError        uint32 = 1 << 31          // bit 31: error replies
	repErrUnsup         uint32 = repFlagError | 1 // NBD_REP_ERR_UNSUP
	repErrPolicy        uint32 = repFlagError | 2 // NBD_REP_ERR_POLICY
	repErrInvalid       uint32 = repFlagError | 3 // NBD_REP_ERR_INVALID
	repErrPlatform      uint32 = repFlagError | 4 // NBD_REP_ERR_PLATFORM
	repErrTLSReqd       uint32 = repFlagError | 5 // NBD_REP_ERR_TLS_REQD
	repErrUnknown       uint32 = repFlagError | 6 // NBD_REP_ERR_UNKNOWN
	repErrShutdown      uint32 = repFlagError | 7 // NBD_REP_ERR_SHUTDOWN
	repErrBlockSizeReqd uint32 = repFlagError | 8 // NBD_REP_ERR_BLOCK_SIZE_REQD
	repErrTooBig        uint32 = repFlagError | 9 // NBD_REP_ERR_TOO_BIG
)

// Information types of NBD_REP_INFO (16 bits).
const (
	infoExport      uint16 = 0 // NBD_INFO_EXPORT
	infoName        uint16 = 1 // NBD_INFO_NAME
	infoDescription uint16 = 2 // NBD_INFO_DESCRIPTION
	infoBlockSize   uint16 = 3 // NBD_INFO_BLOCK_SIZE
)

// Request types (16 bits).
const (
	cmdRead        uint16 = 0 // NBD_CMD_READ
	cmdWrite       uint16 = 1 // NBD_CMD_WRITE
	cmdDisc        uint16 = 2 // NBD_CMD_DISC
	cmdFlush       uint16 = 3 // NBD_CMD_FLUSH
	cmdTrim        uint16 = 4 // NBD_CMD_TRIM
	cmdCache       uint16 = 5 // NBD_CMD_CACHE (not implemented)
	cmdWriteZeroes uint16 = 6 // NBD_CMD_WRITE_ZEROES
	cmdBlockStatus uint16 = 7 // NBD_CMD_BLOCK_STATUS
	cmdResize      uint16 = 8 // NBD_CMD_RESIZE (experimental, not implemented)
)

// Command flags (16 bits).
const (
	cmdFlagFUA      uint16 = 1 << 0 // NBD_CMD_FLAG_FUA
	cmdFlagNoHole   uint16 = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	cmdFlagDF       uint16 = 1 << 2 // NBD_CMD_FLAG_DF
	cmdFlagReqOne   uint16 = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	cmdFlagFastZero uint16 = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
)

// Structured reply flags and chunk types (16 bits each).
const (
	replyFlagDone uint16 = 1 << 0 // NBD_REPLY_FLAG_DONE

	replyTypeNone        uint16 = 0         // NBD_REPLY_TYPE_NONE
	replyTypeOffsetData  uint16 = 1         // NBD_REPLY_TYPE_OFFSET_DATA
	replyTypeOffsetHole  uint16 = 2         // NBD_REPLY_TYPE_OFFSET_HOLE
	replyTypeBlockStatus uint16 = 5         // NBD_REPLY_TYPE_BLOCK_STATUS
	replyTypeError       uint16 = 1<<15 | 1 // NBD_REPLY_TYPE_ERROR
	replyTypeErrorOffset uint16 = 1<<15 | 2 // NBD_REPLY_TYPE_ERROR_OFFSET
	replyTypeErrorBit    uint16 = 1 << 15   // all error chunk types
	stateHole            uint32 = 1 << 0    // NBD_STATE_HOLE (base:allocation)
	stateZero            uint32 = 1 << 1    // NBD_STATE_ZERO (base:allocation)
	metaBaseAllocation          = "base:allocation"
	metaBaseAllocationID uint32 = 1 // our context ID for base:allocation
)

// Sizes of fixed wire structures.
const (
	requestSize     = 28 // magic 4, flags 2, type 2, handle 8, offset 8, length 4
	simpleReplySize = 16 // magic 4, error 4, handle 8
	chunkHeaderSize = 20 // magic 4, flags 2, type 2, handle 8, length 4
	optHeaderSize   = 16 // magic 8, option 4, length 4
	optReplySize    = 20 // magic 8, option 4, type 4, length 4
)

// Protocol limits.
const (
	maxStringLen = 4096 // strings MUST be no longer than 4096 bytes
	// maxOptionLen bounds an option's data; longer options are drained
	// (never buffered) and refused with NBD_REP_ERR_TOO_BIG.
	maxOptionLen = 64 << 10
	// dosWriteLen: the spec says a WRITE payload below 2^25 bytes SHOULD
	// NOT be treated as a denial of service, so a too-large WRITE up to
	// this length is drained and failed; a longer one ends the connection.
	dosWriteLen = 1 << 25
	// maxDescriptors bounds one NBD_REPLY_TYPE_BLOCK_STATUS chunk.
	maxDescriptors = 1 << 16
)
