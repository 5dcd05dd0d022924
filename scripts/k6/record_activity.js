// Unary RecordActivity at a fixed number of VUs, for scripts/crosscheck.py:
// the same kind of events as `python -m scripts.loadtest --mode unary`
// (message.text by uniformly drawn users), unique event ids, bounded in
// time and in iterations.
//
//   k6 run --no-usage-report -e TARGET=127.0.0.1:50051 -e TENANT=demo \
//     -e VUS=64 -e DURATION=20s -e RUN_ID=k6x -e SUMMARY=out.json \
//     scripts/k6/record_activity.js
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const TARGET = __ENV.TARGET || '127.0.0.1:50051';
const TENANT = __ENV.TENANT || 'demo';
const RUN_ID = __ENV.RUN_ID || 'k6';
const USERS = parseInt(__ENV.USERS || '20000', 10);
const TIMEOUT = __ENV.TIMEOUT || '30s';
// An API token with the ingest role (empty: a server with POINTS_AUTH=off).
const TOKEN = __ENV.TOKEN || '';

if (!/^127\.0\.0\.1:\d+$/.test(TARGET)) {
  throw new Error(`TARGET must be 127.0.0.1:PORT, not ${TARGET}`);
}

export const options = {
  scenarios: {
    unary: {
      executor: 'shared-iterations',
      vus: parseInt(__ENV.VUS || '64', 10),
      iterations: parseInt(__ENV.ITERATIONS || '10000000', 10),
      maxDuration: __ENV.DURATION || '20s',
      gracefulStop: '5s',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
};

const client = new grpc.Client();
// The repository's contract, read at init: no reflection round trip per VU.
client.load(['../../protos'], 'points/v1/points.proto');

// gRPC status names by code; one counter per failing status, so the
// end-of-test summary carries errors by kind (failed_<NAME>).
const STATUS = [
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
  'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION',
  'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS',
  'UNAUTHENTICATED',
];
const answered = new Counter('answered');
const failed = {};
for (const name of STATUS.slice(1)) failed[name] = new Counter(`failed_${name}`);
let connected = false;

export default function () {
  if (!connected) {
    try {
      client.connect(TARGET, { plaintext: true, timeout: '10s' });
      connected = true;
    } catch (e) {
      failed.UNAVAILABLE.add(1);
      return;
    }
  }
  const n = exec.scenario.iterationInTest;
  const user = Math.floor(Math.random() * USERS);
  const event = {
    tenant_id: TENANT,
    event_id: `${RUN_ID}-${n}`,
    user_id: `${RUN_ID}-u${user}`,
    action: 'message.text',
    occurred_at: new Date().toISOString(),
    group_id: `${RUN_ID}-g${user % 97}`,
    department_id: `d${user % 13}`,
  };
  const params = { timeout: TIMEOUT };
  if (TOKEN) {
    params.metadata = { authorization: `Bearer ${TOKEN}` };
  }
  const res = client.invoke('points.v1.PointsService/RecordActivity', event, params);
  if (res && res.status === grpc.StatusOK) {
    answered.add(1);
  } else {
    failed[STATUS[res ? res.status : 14] || 'UNKNOWN'].add(1);
  }
}

export function handleSummary(data) {
  const out = JSON.stringify(data);
  return __ENV.SUMMARY ? { [__ENV.SUMMARY]: out } : { stdout: out };
}
