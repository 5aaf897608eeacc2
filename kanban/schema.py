"""Board schema: the tables Hermes Agent 0.19 creates, plus hermesd's own.

HERMES_SCHEMA is the schema of a board written by Hermes Agent 0.19.0's own CLI (read
from `tests/fixtures/hermes-0.19-home/kanban.db`). New boards get it as it is, so that
`hermes kanban` can open them. Existing boards are never altered, except that hermesd
adds its own tables (prefixed `hermesd_`).
"""

HERMES_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id                   TEXT PRIMARY KEY,
    title                TEXT NOT NULL,
    body                 TEXT,
    assignee             TEXT,
    status               TEXT NOT NULL,
    priority             INTEGER DEFAULT 0,
    created_by           TEXT,
    created_at           INTEGER NOT NULL,
    started_at           INTEGER,
    completed_at         INTEGER,
    workspace_kind       TEXT NOT NULL DEFAULT 'scratch',
    workspace_path       TEXT,
    branch_name          TEXT,
    project_id           TEXT,
    claim_lock           TEXT,
    claim_expires        INTEGER,
    tenant               TEXT,
    result               TEXT,
    idempotency_key      TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    worker_pid           INTEGER,
    last_failure_error   TEXT,
    max_runtime_seconds  INTEGER,
    last_heartbeat_at    INTEGER,
    current_run_id       INTEGER,
    workflow_template_id TEXT,
    current_step_key     TEXT,
    skills               TEXT,
    model_override       TEXT,
    max_retries          INTEGER,
    goal_mode            INTEGER NOT NULL DEFAULT 0,
    goal_max_turns       INTEGER,
    session_id           TEXT,
    block_kind           TEXT,
    block_recurrences    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS task_links (
    parent_id  TEXT NOT NULL,
    child_id   TEXT NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);

CREATE TABLE IF NOT EXISTS task_comments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL,
    author     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS task_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL,
    run_id     INTEGER,
    kind       TEXT NOT NULL,
    payload    TEXT,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS task_runs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id             TEXT NOT NULL,
    profile             TEXT,
    step_key            TEXT,
    status              TEXT NOT NULL,
    claim_lock          TEXT,
    claim_expires       INTEGER,
    worker_pid          INTEGER,
    max_runtime_seconds INTEGER,
    last_heartbeat_at   INTEGER,
    started_at          INTEGER NOT NULL,
    ended_at            INTEGER,
    outcome             TEXT,
    summary             TEXT,
    metadata            TEXT,
    error               TEXT
);

CREATE TABLE IF NOT EXISTS task_attachments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      TEXT NOT NULL,
    filename     TEXT NOT NULL,
    stored_path  TEXT NOT NULL,
    content_type TEXT,
    size         INTEGER NOT NULL DEFAULT 0,
    uploaded_by  TEXT,
    created_at   INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS kanban_notify_subs (
    task_id       TEXT NOT NULL,
    platform      TEXT NOT NULL,
    chat_id       TEXT NOT NULL,
    thread_id     TEXT NOT NULL DEFAULT '',
    user_id       TEXT,
    notifier_profile TEXT,
    created_at    INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, platform, chat_id, thread_id)
);

CREATE INDEX IF NOT EXISTS idx_tasks_assignee_status ON tasks(assignee, status);

CREATE INDEX IF NOT EXISTS idx_tasks_status          ON tasks(status);

CREATE INDEX IF NOT EXISTS idx_links_child           ON task_links(child_id);

CREATE INDEX IF NOT EXISTS idx_links_parent          ON task_links(parent_id);

CREATE INDEX IF NOT EXISTS idx_comments_task         ON task_comments(task_id, created_at);

CREATE INDEX IF NOT EXISTS idx_events_task           ON task_events(task_id, created_at);

CREATE INDEX IF NOT EXISTS idx_runs_task             ON task_runs(task_id, started_at);

CREATE INDEX IF NOT EXISTS idx_runs_status           ON task_runs(status);

CREATE INDEX IF NOT EXISTS idx_attachments_task      ON task_attachments(task_id, created_at);

CREATE INDEX IF NOT EXISTS idx_notify_task           ON kanban_notify_subs(task_id);

CREATE INDEX IF NOT EXISTS idx_tasks_tenant ON tasks(tenant);

CREATE INDEX IF NOT EXISTS idx_tasks_idempotency ON tasks(idempotency_key);

CREATE INDEX IF NOT EXISTS idx_tasks_session_id ON tasks(session_id);

CREATE INDEX IF NOT EXISTS idx_events_run ON task_events(run_id, id);
"""

HERMESD_SCHEMA = """
CREATE TABLE IF NOT EXISTS hermesd_owner (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       INTEGER NOT NULL,
    profile     TEXT,
    pid         INTEGER,
    host        TEXT,
    since       INTEGER NOT NULL
);
"""
