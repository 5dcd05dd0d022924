import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    AWARDED: _ClassVar[Outcome]
    DUPLICATE: _ClassVar[Outcome]
    CAPPED: _ClassVar[Outcome]
    THROTTLED: _ClassVar[Outcome]
    NO_RULE: _ClassVar[Outcome]
    REJECTED: _ClassVar[Outcome]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ACTOR: _ClassVar[Role]
    TARGET: _ClassVar[Role]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    AWARD: _ClassVar[EntryKind]
    SPEND: _ClassVar[EntryKind]
    REFUND: _ClassVar[EntryKind]
    ADJUSTMENT: _ClassVar[EntryKind]
    RELEASE: _ClassVar[EntryKind]
    VOID: _ClassVar[EntryKind]

class Period(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERIOD_UNSPECIFIED: _ClassVar[Period]
    DAY: _ClassVar[Period]
    WEEK: _ClassVar[Period]
    MONTH: _ClassVar[Period]
    ALL_TIME: _ClassVar[Period]

class ScopeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_TYPE_UNSPECIFIED: _ClassVar[ScopeType]
    TENANT: _ClassVar[ScopeType]
    DEPARTMENT: _ClassVar[ScopeType]
    GROUP: _ClassVar[ScopeType]

class ItemKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_KIND_UNSPECIFIED: _ClassVar[ItemKind]
    VIRTUAL: _ClassVar[ItemKind]
    PHYSICAL: _ClassVar[ItemKind]
    BENEFIT: _ClassVar[ItemKind]
    DONATION: _ClassVar[ItemKind]
    STREAK_FREEZE: _ClassVar[ItemKind]

class RedemptionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDEMPTION_STATUS_UNSPECIFIED: _ClassVar[RedemptionStatus]
    PENDING: _ClassVar[RedemptionStatus]
    COMPLETED: _ClassVar[RedemptionStatus]
    FAILED: _ClassVar[RedemptionStatus]
    REFUNDING: _ClassVar[RedemptionStatus]
    REFUNDED: _ClassVar[RedemptionStatus]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    DAILY: _ClassVar[TaskKind]
    WEEKLY: _ClassVar[TaskKind]
    MONTHLY: _ClassVar[TaskKind]
    GROWTH: _ClassVar[TaskKind]

class FlagState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLAG_STATE_UNSPECIFIED: _ClassVar[FlagState]
    FLAG_OPEN: _ClassVar[FlagState]
    FLAG_RELEASED: _ClassVar[FlagState]
    FLAG_VOIDED: _ClassVar[FlagState]
OUTCOME_UNSPECIFIED: Outcome
AWARDED: Outcome
DUPLICATE: Outcome
CAPPED: Outcome
THROTTLED: Outcome
NO_RULE: Outcome
REJECTED: Outcome
ROLE_UNSPECIFIED: Role
ACTOR: Role
TARGET: Role
ENTRY_KIND_UNSPECIFIED: EntryKind
AWARD: EntryKind
SPEND: EntryKind
REFUND: EntryKind
ADJUSTMENT: EntryKind
RELEASE: EntryKind
VOID: EntryKind
PERIOD_UNSPECIFIED: Period
DAY: Period
WEEK: Period
MONTH: Period
ALL_TIME: Period
SCOPE_TYPE_UNSPECIFIED: ScopeType
TENANT: ScopeType
DEPARTMENT: ScopeType
GROUP: ScopeType
ITEM_KIND_UNSPECIFIED: ItemKind
VIRTUAL: ItemKind
PHYSICAL: ItemKind
BENEFIT: ItemKind
DONATION: ItemKind
STREAK_FREEZE: ItemKind
REDEMPTION_STATUS_UNSPECIFIED: RedemptionStatus
PENDING: RedemptionStatus
COMPLETED: RedemptionStatus
FAILED: RedemptionStatus
REFUNDING: RedemptionStatus
REFUNDED: RedemptionStatus
TASK_KIND_UNSPECIFIED: TaskKind
DAILY: TaskKind
WEEKLY: TaskKind
MONTHLY: TaskKind
GROWTH: TaskKind
FLAG_STATE_UNSPECIFIED: FlagState
FLAG_OPEN: FlagState
FLAG_RELEASED: FlagState
FLAG_VOIDED: FlagState

class ActivityEvent(_message.Message):
    __slots__ = ("tenant_id", "event_id", "user_id", "action", "occurred_at", "target_user_id", "group_id", "department_id", "quantity", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    TARGET_USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    event_id: str
    user_id: str
    action: str
    occurred_at: _timestamp_pb2.Timestamp
    target_user_id: str
    group_id: str
    department_id: str
    quantity: int
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, tenant_id: _Optional[str] = ..., event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., action: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target_user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., department_id: _Optional[str] = ..., quantity: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("user_id", "role", "outcome", "points", "balance", "reason", "held")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    role: Role
    outcome: Outcome
    points: int
    balance: int
    reason: str
    held: bool
    def __init__(self, user_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., points: _Optional[int] = ..., balance: _Optional[int] = ..., reason: _Optional[str] = ..., held: _Optional[bool] = ...) -> None: ...

class ActivityResult(_message.Message):
    __slots__ = ("event_id", "outcome", "points", "balance", "reason", "original_outcome", "credits", "field", "bonuses", "level_ups")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    BONUSES_FIELD_NUMBER: _ClassVar[int]
    LEVEL_UPS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    outcome: Outcome
    points: int
    balance: int
    reason: str
    original_outcome: Outcome
    credits: _containers.RepeatedCompositeFieldContainer[Credit]
    field: str
    bonuses: _containers.RepeatedCompositeFieldContainer[Bonus]
    level_ups: _containers.RepeatedCompositeFieldContainer[LevelUp]
    def __init__(self, event_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., points: _Optional[int] = ..., balance: _Optional[int] = ..., reason: _Optional[str] = ..., original_outcome: _Optional[_Union[Outcome, str]] = ..., credits: _Optional[_Iterable[_Union[Credit, _Mapping]]] = ..., field: _Optional[str] = ..., bonuses: _Optional[_Iterable[_Union[Bonus, _Mapping]]] = ..., level_ups: _Optional[_Iterable[_Union[LevelUp, _Mapping]]] = ...) -> None: ...

class Bonus(_message.Message):
    __slots__ = ("user_id", "kind", "id", "name", "name_en", "points", "reason", "period_key", "badge", "tag")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_EN_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    BADGE_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    kind: str
    id: str
    name: str
    name_en: str
    points: int
    reason: str
    period_key: str
    badge: str
    tag: str
    def __init__(self, user_id: _Optional[str] = ..., kind: _Optional[str] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., name_en: _Optional[str] = ..., points: _Optional[int] = ..., reason: _Optional[str] = ..., period_key: _Optional[str] = ..., badge: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class Level(_message.Message):
    __slots__ = ("number", "id", "name", "name_en", "min_points", "privileges")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_EN_FIELD_NUMBER: _ClassVar[int]
    MIN_POINTS_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGES_FIELD_NUMBER: _ClassVar[int]
    number: int
    id: str
    name: str
    name_en: str
    min_points: int
    privileges: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, number: _Optional[int] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., name_en: _Optional[str] = ..., min_points: _Optional[int] = ..., privileges: _Optional[_Iterable[str]] = ...) -> None: ...

class LevelUp(_message.Message):
    __slots__ = ("user_id", "level")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    level: Level
    def __init__(self, user_id: _Optional[str] = ..., level: _Optional[_Union[Level, _Mapping]] = ...) -> None: ...

class RecordActivitiesRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ActivityEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ActivityEvent, _Mapping]]] = ...) -> None: ...

class RecordActivitiesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ActivityResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ActivityResult, _Mapping]]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("tenant_id", "user_id", "available", "lifetime_earned", "spent", "earned_today", "day", "held")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_EARNED_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    EARNED_TODAY_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    available: int
    lifetime_earned: int
    spent: int
    earned_today: int
    day: str
    held: int
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., available: _Optional[int] = ..., lifetime_earned: _Optional[int] = ..., spent: _Optional[int] = ..., earned_today: _Optional[int] = ..., day: _Optional[str] = ..., held: _Optional[int] = ...) -> None: ...

class ListLedgerRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("entry_id", "kind", "action", "points", "balance_after", "event_id", "role", "counterpart_user_id", "group_id", "department_id", "occurred_at", "recorded_at", "reason", "quantity", "attributes", "held", "flag_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    COUNTERPART_USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    FLAG_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    kind: EntryKind
    action: str
    points: int
    balance_after: int
    event_id: str
    role: Role
    counterpart_user_id: str
    group_id: str
    department_id: str
    occurred_at: _timestamp_pb2.Timestamp
    recorded_at: _timestamp_pb2.Timestamp
    reason: str
    quantity: int
    attributes: _containers.ScalarMap[str, str]
    held: bool
    flag_id: int
    def __init__(self, entry_id: _Optional[str] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., action: _Optional[str] = ..., points: _Optional[int] = ..., balance_after: _Optional[int] = ..., event_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., counterpart_user_id: _Optional[str] = ..., group_id: _Optional[str] = ..., department_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., quantity: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., held: _Optional[bool] = ..., flag_id: _Optional[int] = ...) -> None: ...

class ListLedgerResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class LeaderboardRequest(_message.Message):
    __slots__ = ("tenant_id", "board", "period", "period_offset", "period_key", "scope_id", "scope_type", "offset", "limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BOARD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_TYPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    board: str
    period: Period
    period_offset: int
    period_key: str
    scope_id: str
    scope_type: ScopeType
    offset: int
    limit: int
    def __init__(self, tenant_id: _Optional[str] = ..., board: _Optional[str] = ..., period: _Optional[_Union[Period, str]] = ..., period_offset: _Optional[int] = ..., period_key: _Optional[str] = ..., scope_id: _Optional[str] = ..., scope_type: _Optional[_Union[ScopeType, str]] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class LeaderboardEntry(_message.Message):
    __slots__ = ("rank", "member_id", "score")
    RANK_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    member_id: str
    score: int
    def __init__(self, rank: _Optional[int] = ..., member_id: _Optional[str] = ..., score: _Optional[int] = ...) -> None: ...

class LeaderboardResponse(_message.Message):
    __slots__ = ("entries", "total_members", "period_key")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LeaderboardEntry]
    total_members: int
    period_key: str
    def __init__(self, entries: _Optional[_Iterable[_Union[LeaderboardEntry, _Mapping]]] = ..., total_members: _Optional[int] = ..., period_key: _Optional[str] = ...) -> None: ...

class GetRankRequest(_message.Message):
    __slots__ = ("tenant_id", "board", "period", "period_offset", "period_key", "scope_id", "scope_type", "member_id", "neighbours")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BOARD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    board: str
    period: Period
    period_offset: int
    period_key: str
    scope_id: str
    scope_type: ScopeType
    member_id: str
    neighbours: int
    def __init__(self, tenant_id: _Optional[str] = ..., board: _Optional[str] = ..., period: _Optional[_Union[Period, str]] = ..., period_offset: _Optional[int] = ..., period_key: _Optional[str] = ..., scope_id: _Optional[str] = ..., scope_type: _Optional[_Union[ScopeType, str]] = ..., member_id: _Optional[str] = ..., neighbours: _Optional[int] = ...) -> None: ...

class GetRankResponse(_message.Message):
    __slots__ = ("rank", "score", "total_members", "above", "below", "period_key")
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ABOVE_FIELD_NUMBER: _ClassVar[int]
    BELOW_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    rank: int
    score: int
    total_members: int
    above: _containers.RepeatedCompositeFieldContainer[LeaderboardEntry]
    below: _containers.RepeatedCompositeFieldContainer[LeaderboardEntry]
    period_key: str
    def __init__(self, rank: _Optional[int] = ..., score: _Optional[int] = ..., total_members: _Optional[int] = ..., above: _Optional[_Iterable[_Union[LeaderboardEntry, _Mapping]]] = ..., below: _Optional[_Iterable[_Union[LeaderboardEntry, _Mapping]]] = ..., period_key: _Optional[str] = ...) -> None: ...

class ListWinnersRequest(_message.Message):
    __slots__ = ("tenant_id", "board", "period", "period_key", "scope_id", "scope_type", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BOARD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    board: str
    period: Period
    period_key: str
    scope_id: str
    scope_type: ScopeType
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., board: _Optional[str] = ..., period: _Optional[_Union[Period, str]] = ..., period_key: _Optional[str] = ..., scope_id: _Optional[str] = ..., scope_type: _Optional[_Union[ScopeType, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class WinnersPeriod(_message.Message):
    __slots__ = ("board", "period", "period_key", "scope_type", "scope_id", "winners", "recorded_at")
    BOARD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    WINNERS_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    board: str
    period: Period
    period_key: str
    scope_type: ScopeType
    scope_id: str
    winners: _containers.RepeatedCompositeFieldContainer[LeaderboardEntry]
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, board: _Optional[str] = ..., period: _Optional[_Union[Period, str]] = ..., period_key: _Optional[str] = ..., scope_type: _Optional[_Union[ScopeType, str]] = ..., scope_id: _Optional[str] = ..., winners: _Optional[_Iterable[_Union[LeaderboardEntry, _Mapping]]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListWinnersResponse(_message.Message):
    __slots__ = ("periods", "next_page_token")
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    periods: _containers.RepeatedCompositeFieldContainer[WinnersPeriod]
    next_page_token: str
    def __init__(self, periods: _Optional[_Iterable[_Union[WinnersPeriod, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("tenant_id", "item_id", "name", "description", "kind", "cost", "stock", "per_user_limit", "limit_period", "starts_at", "ends_at", "enabled", "created_at", "updated_at", "min_level")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    PER_USER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PERIOD_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    MIN_LEVEL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    item_id: str
    name: str
    description: str
    kind: ItemKind
    cost: int
    stock: int
    per_user_limit: int
    limit_period: Period
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    enabled: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    min_level: str
    def __init__(self, tenant_id: _Optional[str] = ..., item_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., kind: _Optional[_Union[ItemKind, str]] = ..., cost: _Optional[int] = ..., stock: _Optional[int] = ..., per_user_limit: _Optional[int] = ..., limit_period: _Optional[_Union[Period, str]] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enabled: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_level: _Optional[str] = ...) -> None: ...

class Reward(_message.Message):
    __slots__ = ("item", "user_remaining")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    USER_REMAINING_FIELD_NUMBER: _ClassVar[int]
    item: Item
    user_remaining: int
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ..., user_remaining: _Optional[int] = ...) -> None: ...

class ListRewardsRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class ListRewardsResponse(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[Reward]
    def __init__(self, rewards: _Optional[_Iterable[_Union[Reward, _Mapping]]] = ...) -> None: ...

class Redemption(_message.Message):
    __slots__ = ("redemption_id", "tenant_id", "request_id", "user_id", "item_id", "item_name", "quantity", "points", "status", "reason", "balance_after", "refund_reason", "created_at", "updated_at")
    REDEMPTION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_NAME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    REFUND_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    redemption_id: str
    tenant_id: str
    request_id: str
    user_id: str
    item_id: str
    item_name: str
    quantity: int
    points: int
    status: RedemptionStatus
    reason: str
    balance_after: int
    refund_reason: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, redemption_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., item_name: _Optional[str] = ..., quantity: _Optional[int] = ..., points: _Optional[int] = ..., status: _Optional[_Union[RedemptionStatus, str]] = ..., reason: _Optional[str] = ..., balance_after: _Optional[int] = ..., refund_reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RedeemRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id", "item_id", "quantity", "request_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    item_id: str
    quantity: int
    request_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., quantity: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RedeemResponse(_message.Message):
    __slots__ = ("redemption_id", "status", "points_spent", "balance", "item", "redemption")
    REDEMPTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POINTS_SPENT_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    REDEMPTION_FIELD_NUMBER: _ClassVar[int]
    redemption_id: str
    status: RedemptionStatus
    points_spent: int
    balance: int
    item: Item
    redemption: Redemption
    def __init__(self, redemption_id: _Optional[str] = ..., status: _Optional[_Union[RedemptionStatus, str]] = ..., points_spent: _Optional[int] = ..., balance: _Optional[int] = ..., item: _Optional[_Union[Item, _Mapping]] = ..., redemption: _Optional[_Union[Redemption, _Mapping]] = ...) -> None: ...

class ListRedemptionsRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRedemptionsResponse(_message.Message):
    __slots__ = ("redemptions", "next_page_token")
    REDEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    redemptions: _containers.RepeatedCompositeFieldContainer[Redemption]
    next_page_token: str
    def __init__(self, redemptions: _Optional[_Iterable[_Union[Redemption, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateItemRequest(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: Item
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class UpdateItemRequest(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: Item
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class DisableItemRequest(_message.Message):
    __slots__ = ("tenant_id", "item_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    item_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("tenant_id", "include_disabled")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DISABLED_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    include_disabled: bool
    def __init__(self, tenant_id: _Optional[str] = ..., include_disabled: _Optional[bool] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class AdminListRedemptionsRequest(_message.Message):
    __slots__ = ("tenant_id", "item_id", "user_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    item_id: str
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., item_id: _Optional[str] = ..., user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RefundRedemptionRequest(_message.Message):
    __slots__ = ("tenant_id", "redemption_id", "reason")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REDEMPTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    redemption_id: str
    reason: str
    def __init__(self, tenant_id: _Optional[str] = ..., redemption_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AdjustPointsRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id", "points", "reason", "idempotency_key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    points: int
    reason: str
    idempotency_key: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., points: _Optional[int] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AdjustPointsResponse(_message.Message):
    __slots__ = ("entry_id", "points", "balance", "duplicate")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    points: int
    balance: int
    duplicate: bool
    def __init__(self, entry_id: _Optional[str] = ..., points: _Optional[int] = ..., balance: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetProgressRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class LevelProgress(_message.Message):
    __slots__ = ("current", "next", "lifetime_earned", "points_to_next")
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_EARNED_FIELD_NUMBER: _ClassVar[int]
    POINTS_TO_NEXT_FIELD_NUMBER: _ClassVar[int]
    current: Level
    next: Level
    lifetime_earned: int
    points_to_next: int
    def __init__(self, current: _Optional[_Union[Level, _Mapping]] = ..., next: _Optional[_Union[Level, _Mapping]] = ..., lifetime_earned: _Optional[int] = ..., points_to_next: _Optional[int] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("id", "name", "name_en", "kind", "period", "period_key", "progress", "target", "reward_points", "reward_badge", "completed", "ends_at", "seconds_left", "per_attribute")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_EN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REWARD_POINTS_FIELD_NUMBER: _ClassVar[int]
    REWARD_BADGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    PER_ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    name_en: str
    kind: TaskKind
    period: Period
    period_key: str
    progress: int
    target: int
    reward_points: int
    reward_badge: str
    completed: bool
    ends_at: _timestamp_pb2.Timestamp
    seconds_left: int
    per_attribute: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., name_en: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., period: _Optional[_Union[Period, str]] = ..., period_key: _Optional[str] = ..., progress: _Optional[int] = ..., target: _Optional[int] = ..., reward_points: _Optional[int] = ..., reward_badge: _Optional[str] = ..., completed: _Optional[bool] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., seconds_left: _Optional[int] = ..., per_attribute: _Optional[str] = ...) -> None: ...

class BadgeEarned(_message.Message):
    __slots__ = ("id", "name", "name_en", "description", "earned_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_EN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EARNED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    name_en: str
    description: str
    earned_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., name_en: _Optional[str] = ..., description: _Optional[str] = ..., earned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("tenant_id", "user_id", "level", "tasks", "badges", "streak")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    BADGES_FIELD_NUMBER: _ClassVar[int]
    STREAK_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    level: LevelProgress
    tasks: _containers.RepeatedCompositeFieldContainer[TaskProgress]
    badges: _containers.RepeatedCompositeFieldContainer[BadgeEarned]
    streak: StreakProgress
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., level: _Optional[_Union[LevelProgress, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[TaskProgress, _Mapping]]] = ..., badges: _Optional[_Iterable[_Union[BadgeEarned, _Mapping]]] = ..., streak: _Optional[_Union[StreakProgress, _Mapping]] = ...) -> None: ...

class StreakProgress(_message.Message):
    __slots__ = ("name", "name_en", "current", "best", "freezes_held", "freezes_max", "today_needed", "today_working_day", "next_milestone_days", "next_milestone_points")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_EN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    FREEZES_HELD_FIELD_NUMBER: _ClassVar[int]
    FREEZES_MAX_FIELD_NUMBER: _ClassVar[int]
    TODAY_NEEDED_FIELD_NUMBER: _ClassVar[int]
    TODAY_WORKING_DAY_FIELD_NUMBER: _ClassVar[int]
    NEXT_MILESTONE_DAYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_MILESTONE_POINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    name_en: str
    current: int
    best: int
    freezes_held: int
    freezes_max: int
    today_needed: bool
    today_working_day: bool
    next_milestone_days: int
    next_milestone_points: int
    def __init__(self, name: _Optional[str] = ..., name_en: _Optional[str] = ..., current: _Optional[int] = ..., best: _Optional[int] = ..., freezes_held: _Optional[int] = ..., freezes_max: _Optional[int] = ..., today_needed: _Optional[bool] = ..., today_working_day: _Optional[bool] = ..., next_milestone_days: _Optional[int] = ..., next_milestone_points: _Optional[int] = ...) -> None: ...

class ListThanksRequest(_message.Message):
    __slots__ = ("tenant_id", "department_id", "user_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    department_id: str
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., department_id: _Optional[str] = ..., user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ThanksCard(_message.Message):
    __slots__ = ("event_id", "sender_user_id", "receiver_user_id", "message", "points", "occurred_at", "department_id", "receiver_department_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_DEPARTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    sender_user_id: str
    receiver_user_id: str
    message: str
    points: int
    occurred_at: _timestamp_pb2.Timestamp
    department_id: str
    receiver_department_id: str
    def __init__(self, event_id: _Optional[str] = ..., sender_user_id: _Optional[str] = ..., receiver_user_id: _Optional[str] = ..., message: _Optional[str] = ..., points: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., department_id: _Optional[str] = ..., receiver_department_id: _Optional[str] = ...) -> None: ...

class ListThanksResponse(_message.Message):
    __slots__ = ("cards", "next_page_token")
    CARDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    cards: _containers.RepeatedCompositeFieldContainer[ThanksCard]
    next_page_token: str
    def __init__(self, cards: _Optional[_Iterable[_Union[ThanksCard, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("token_id", "name", "roles", "tenants", "all_tenants", "created_at", "expires_at", "revoked_at", "replaced_by", "state")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    ALL_TENANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    tenants: _containers.RepeatedScalarFieldContainer[str]
    all_tenants: bool
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    replaced_by: str
    state: str
    def __init__(self, token_id: _Optional[str] = ..., name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., tenants: _Optional[_Iterable[str]] = ..., all_tenants: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replaced_by: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "roles", "tenants", "all_tenants", "expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    ALL_TENANTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    tenants: _containers.RepeatedScalarFieldContainer[str]
    all_tenants: bool
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., tenants: _Optional[_Iterable[str]] = ..., all_tenants: _Optional[bool] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "info")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: TokenInfo
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ("token_id", "grace_s")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    grace_s: int
    def __init__(self, token_id: _Optional[str] = ..., grace_s: _Optional[int] = ...) -> None: ...

class RotateTokenResponse(_message.Message):
    __slots__ = ("token", "old", "new")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    OLD_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    token: str
    old: TokenInfo
    new: TokenInfo
    def __init__(self, token: _Optional[str] = ..., old: _Optional[_Union[TokenInfo, _Mapping]] = ..., new: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    def __init__(self, token_id: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("caller", "tenant_id", "rpc", "since", "until", "page_size", "page_token")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    caller: str
    tenant_id: str
    rpc: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, caller: _Optional[str] = ..., tenant_id: _Optional[str] = ..., rpc: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("audit_id", "occurred_at", "caller", "credential", "rpc", "tenant_id", "request_json", "outcome", "message")
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    audit_id: int
    occurred_at: _timestamp_pb2.Timestamp
    caller: str
    credential: str
    rpc: str
    tenant_id: str
    request_json: str
    outcome: str
    message: str
    def __init__(self, audit_id: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ..., credential: _Optional[str] = ..., rpc: _Optional[str] = ..., tenant_id: _Optional[str] = ..., request_json: _Optional[str] = ..., outcome: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FlagFinding(_message.Message):
    __slots__ = ("signal", "period_key", "counterparts", "evidence", "found_at")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    PERIOD_KEY_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    FOUND_AT_FIELD_NUMBER: _ClassVar[int]
    signal: str
    period_key: str
    counterparts: _containers.RepeatedScalarFieldContainer[str]
    evidence: str
    found_at: _timestamp_pb2.Timestamp
    def __init__(self, signal: _Optional[str] = ..., period_key: _Optional[str] = ..., counterparts: _Optional[_Iterable[str]] = ..., evidence: _Optional[str] = ..., found_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Flag(_message.Message):
    __slots__ = ("flag_id", "tenant_id", "user_id", "state", "opened_at", "findings", "held_points", "settled", "decided_at", "decided_by", "note")
    FLAG_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    HELD_POINTS_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    flag_id: int
    tenant_id: str
    user_id: str
    state: FlagState
    opened_at: _timestamp_pb2.Timestamp
    findings: _containers.RepeatedCompositeFieldContainer[FlagFinding]
    held_points: int
    settled: bool
    decided_at: _timestamp_pb2.Timestamp
    decided_by: str
    note: str
    def __init__(self, flag_id: _Optional[int] = ..., tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., state: _Optional[_Union[FlagState, str]] = ..., opened_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., findings: _Optional[_Iterable[_Union[FlagFinding, _Mapping]]] = ..., held_points: _Optional[int] = ..., settled: _Optional[bool] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_by: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ListFlagsRequest(_message.Message):
    __slots__ = ("tenant_id", "state", "user_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: FlagState
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[_Union[FlagState, str]] = ..., user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFlagsResponse(_message.Message):
    __slots__ = ("flags", "next_page_token")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    next_page_token: str
    def __init__(self, flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResolveFlagRequest(_message.Message):
    __slots__ = ("tenant_id", "flag_id", "note")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    FLAG_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    flag_id: int
    note: str
    def __init__(self, tenant_id: _Optional[str] = ..., flag_id: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...
