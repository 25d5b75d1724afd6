from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("frame_id", "model", "version", "bundle_sha256", "codec", "width", "payload", "shape", "capture_time_us", "deadline_ms", "tags", "top_k")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    model: str
    version: str
    bundle_sha256: str
    codec: str
    width: int
    payload: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    capture_time_us: int
    deadline_ms: int
    tags: _containers.ScalarMap[str, str]
    top_k: int
    def __init__(self, frame_id: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., bundle_sha256: _Optional[str] = ..., codec: _Optional[str] = ..., width: _Optional[int] = ..., payload: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., capture_time_us: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ..., top_k: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("frame_id", "status", "top_k", "timings", "error", "model", "version", "width", "tags")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Result.Status]
        OK: _ClassVar[Result.Status]
        DEADLINE_EXCEEDED: _ClassVar[Result.Status]
        INVALID_FRAME: _ClassVar[Result.Status]
        UNKNOWN_MODEL: _ClassVar[Result.Status]
        OVERLOADED: _ClassVar[Result.Status]
        INTERNAL: _ClassVar[Result.Status]
        UNAVAILABLE: _ClassVar[Result.Status]
    STATUS_UNSPECIFIED: Result.Status
    OK: Result.Status
    DEADLINE_EXCEEDED: Result.Status
    INVALID_FRAME: Result.Status
    UNKNOWN_MODEL: Result.Status
    OVERLOADED: Result.Status
    INTERNAL: Result.Status
    UNAVAILABLE: Result.Status
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    status: Result.Status
    top_k: _containers.RepeatedCompositeFieldContainer[ClassScore]
    timings: ServerTimings
    error: str
    model: str
    version: str
    width: int
    tags: _containers.ScalarMap[str, str]
    def __init__(self, frame_id: _Optional[int] = ..., status: _Optional[_Union[Result.Status, str]] = ..., top_k: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ..., error: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., width: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "label", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    score: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ServerTimings(_message.Message):
    __slots__ = ("received_unix_us", "decode_ms", "queue_ms", "tail_ms", "total_ms", "batch_size")
    RECEIVED_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    received_unix_us: int
    decode_ms: float
    queue_ms: float
    tail_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, received_unix_us: _Optional[int] = ..., decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., tail_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("all_versions", "include_labels")
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LABELS_FIELD_NUMBER: _ClassVar[int]
    all_versions: bool
    include_labels: bool
    def __init__(self, all_versions: _Optional[bool] = ..., include_labels: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelManifest]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelManifest, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetHeadRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("path", "offset", "total_size", "data", "sha256", "last", "version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    total_size: int
    data: bytes
    sha256: str
    last: bool
    version: str
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ..., last: _Optional[bool] = ..., version: _Optional[str] = ...) -> None: ...

class WidthInfo(_message.Message):
    __slots__ = ("index", "fraction", "channels", "latent_shape", "bytes_mean", "accuracy")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LATENT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    BYTES_MEAN_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    index: int
    fraction: float
    channels: int
    latent_shape: _containers.RepeatedScalarFieldContainer[int]
    bytes_mean: float
    accuracy: float
    def __init__(self, index: _Optional[int] = ..., fraction: _Optional[float] = ..., channels: _Optional[int] = ..., latent_shape: _Optional[_Iterable[int]] = ..., bytes_mean: _Optional[float] = ..., accuracy: _Optional[float] = ...) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("path", "sha256", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ModelManifest(_message.Message):
    __slots__ = ("name", "version", "task", "input_shape", "labels", "widths", "codecs", "files", "bundle_sha256", "manifest_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WIDTHS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    task: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    widths: _containers.RepeatedCompositeFieldContainer[WidthInfo]
    codecs: _containers.RepeatedScalarFieldContainer[str]
    files: _containers.RepeatedCompositeFieldContainer[FileInfo]
    bundle_sha256: str
    manifest_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., task: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[str]] = ..., widths: _Optional[_Iterable[_Union[WidthInfo, _Mapping]]] = ..., codecs: _Optional[_Iterable[str]] = ..., files: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ..., bundle_sha256: _Optional[str] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class PeerOffer(_message.Message):
    __slots__ = ("sdp", "type")
    SDP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    sdp: str
    type: str
    def __init__(self, sdp: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class PeerAnswer(_message.Message):
    __slots__ = ("sdp", "type", "max_inflight")
    SDP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    sdp: str
    type: str
    max_inflight: int
    def __init__(self, sdp: _Optional[str] = ..., type: _Optional[str] = ..., max_inflight: _Optional[int] = ...) -> None: ...
