"""Kafka error codes kq serve answers with (from kafka-python's ``kafka.errors``)."""

from kafka import errors as E

NONE = 0
UNKNOWN_SERVER_ERROR = -1
OFFSET_OUT_OF_RANGE = E.OffsetOutOfRangeError.errno
CORRUPT_MESSAGE = E.CorruptRecordError.errno
OFFSET_METADATA_TOO_LARGE = E.OffsetMetadataTooLargeError.errno
UNKNOWN_TOPIC_OR_PARTITION = E.UnknownTopicOrPartitionError.errno
MESSAGE_TOO_LARGE = E.MessageSizeTooLargeError.errno
COORDINATOR_LOAD_IN_PROGRESS = E.CoordinatorLoadInProgressError.errno
INVALID_TOPIC_EXCEPTION = E.InvalidTopicError.errno
INVALID_REQUIRED_ACKS = E.InvalidRequiredAcksError.errno
ILLEGAL_GENERATION = E.IllegalGenerationError.errno
INCONSISTENT_GROUP_PROTOCOL = E.InconsistentGroupProtocolError.errno
INVALID_GROUP_ID = E.InvalidGroupIdError.errno
UNKNOWN_MEMBER_ID = E.UnknownMemberIdError.errno
INVALID_SESSION_TIMEOUT = E.InvalidSessionTimeoutError.errno
REBALANCE_IN_PROGRESS = E.RebalanceInProgressError.errno
TOPIC_ALREADY_EXISTS = E.TopicAlreadyExistsError.errno
INVALID_PARTITIONS = E.InvalidPartitionsError.errno
INVALID_REPLICATION_FACTOR = E.InvalidReplicationFactorError.errno
INVALID_CONFIG = E.InvalidConfigurationError.errno
INVALID_REQUEST = E.InvalidRequestError.errno
UNSUPPORTED_FOR_MESSAGE_FORMAT = E.UnsupportedForMessageFormatError.errno
OUT_OF_ORDER_SEQUENCE_NUMBER = E.OutOfOrderSequenceNumberError.errno
INVALID_PRODUCER_EPOCH = E.InvalidProducerEpochError.errno
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = E.TransactionalIdAuthorizationFailedError.errno
KAFKA_STORAGE_ERROR = E.KafkaStorageError.errno
UNKNOWN_PRODUCER_ID = E.UnknownProducerIdError.errno
NON_EMPTY_GROUP = E.NonEmptyGroupError.errno
GROUP_ID_NOT_FOUND = E.GroupIdNotFoundError.errno
FETCH_SESSION_ID_NOT_FOUND = E.FetchSessionIdNotFoundError.errno
MEMBER_ID_REQUIRED = E.MemberIdRequiredError.errno
INVALID_RECORD = E.InvalidRecordError.errno
INVALID_TIMESTAMP = E.InvalidTimestampError.errno
UNSUPPORTED_VERSION = E.UnsupportedVersionError.errno
INVALID_REPLICA_ASSIGNMENT = E.InvalidReplicationAssignmentError.errno
SECURITY_DISABLED = E.SecurityDisabledError.errno
ELECTION_NOT_NEEDED = E.ElectionNotNeededError.errno
NO_REASSIGNMENT_IN_PROGRESS = E.NoReassignmentInProgressError.errno
LOG_DIR_NOT_FOUND = E.LogDirNotFoundError.errno
