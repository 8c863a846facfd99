/*
 * yamlToJson(text) -> string | null: a YAML document as JSON text, read by
 * libyaml, for the policy loader's quick way (src/policy/load.ts). JSON.parse
 * then builds the objects: together about a tenth of js-yaml's time.
 *
 * Design
 *   libyaml reads the syntax (events); what a scalar means is decided here,
 *   exactly as js-yaml's core schema decides it (YAML 1.2: null, true,
 *   false, integers, floats, the rest strings), not as libyaml's YAML 1.1
 *   would (where 02:00:00 is a number and yes a boolean).
 *
 *   Null means "not here": the caller goes on to js-yaml, and from there to
 *   the located parser, which has the last word. Null for anything this
 *   side would have to get right in ways the quick way cannot show: a
 *   syntax error; anchors, aliases, tags, directives; more than one
 *   document or none; a '?' anywhere in a document with a flow collection
 *   (libyaml reads it as a key indicator inside one, as YAML 1.1 did: [?x]
 *   would become [{x: null}]); a mapping in a flow sequence that is not
 *   written with braces ([a: b]); a key that is not a scalar or that would not be its
 *   own text as js-yaml makes keys (~, 0x10, 1.0); a number that JSON would
 *   not write the same way (0x1f, 0o17, +1, 010, .5, 1., .inf, 1e3, more
 *   than 15 digits); a repeated key in one mapping (keys are hashed with their
 *   mapping's number, sorted and compared, so a hash collision only costs
 *   the slow way); line breaks YAML 1.1 has and 1.2 does not (U+0085,
 *   U+2028, U+2029), where the two would cut lines differently; a byte
 *   order mark past the start, a carriage return without a line feed; block
 *   scalars (| and >), whose edges the two read apart; a '#' right after a
 *   quote or a bracket; a plain scalar starting --- or ..., or over
 *   several lines.
 */
#include <node_api.h>
#include <yaml.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char* data;
  size_t len, cap;
  int failed;
} out_t;

static void out_reserve(out_t* o, size_t more) {
  if (o->failed || o->len + more <= o->cap) return;
  size_t cap = o->cap ? o->cap : 1 << 16;
  while (cap < o->len + more) cap *= 2;
  char* d = realloc(o->data, cap);
  if (!d) { o->failed = 1; return; }
  o->data = d;
  o->cap = cap;
}

static void out_bytes(out_t* o, const char* s, size_t n) {
  out_reserve(o, n);
  if (o->failed) return;
  memcpy(o->data + o->len, s, n);
  o->len += n;
}

static void out_char(out_t* o, char c) { out_bytes(o, &c, 1); }

/* A JSON string: quotes, backslashes and control characters escaped, the rest (UTF-8) as it is. */
static void out_string(out_t* o, const unsigned char* s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  out_reserve(o, n + 2);
  out_char(o, '"');
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out_bytes(o, (const char*)s + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out_bytes(o, "\\\"", 2); break;
      case '\\': out_bytes(o, "\\\\", 2); break;
      case '\n': out_bytes(o, "\\n", 2); break;
      case '\t': out_bytes(o, "\\t", 2); break;
      case '\r': out_bytes(o, "\\r", 2); break;
      default: {
        char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        out_bytes(o, u, 6);
      }
    }
  }
  out_bytes(o, (const char*)s + run, n - run);
  out_char(o, '"');
}

enum { K_STRING, K_NULL, K_TRUE, K_FALSE, K_NUMBER, K_OTHER };

static int is_dec(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_hex(unsigned char c) { return is_dec(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int eq(const unsigned char* s, size_t n, const char* w) { return n == strlen(w) && memcmp(s, w, n) == 0; }

/* js-yaml's core-schema integer: 0o[0-7]+ | 0x[0-9a-fA-F]+ | [-+]?[0-9]+ */
static int js_int(const unsigned char* s, size_t n) {
  size_t i = 0;
  if (n > 2 && s[0] == '0' && (s[1] == 'o' || s[1] == 'x')) {
    for (i = 2; i < n; i++) if (s[1] == 'o' ? (s[i] < '0' || s[i] > '7') : !is_hex(s[i])) return 0;
    return 1;
  }
  if (i < n && (s[i] == '-' || s[i] == '+')) i++;
  if (i == n) return 0;
  for (; i < n; i++) if (!is_dec(s[i])) return 0;
  return 1;
}

/* Digits from s[*i] on; how many. */
static size_t digits(const unsigned char* s, size_t n, size_t* i) {
  size_t start = *i;
  while (*i < n && is_dec(s[*i])) (*i)++;
  return *i - start;
}

/*
 * js-yaml's core-schema float: [-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)? |
 * [-+]?\.[0-9]+([eE][-+]?[0-9]+)? | [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)
 */
static int js_float(const unsigned char* s, size_t n) {
  size_t i = 0;
  if (eq(s, n, ".nan") || eq(s, n, ".NaN") || eq(s, n, ".NAN")) return 1;
  if (i < n && (s[i] == '-' || s[i] == '+')) i++;
  if (eq(s + i, n - i, ".inf") || eq(s + i, n - i, ".Inf") || eq(s + i, n - i, ".INF")) return 1;
  if (i < n && is_dec(s[i])) {
    digits(s, n, &i);
    if (i < n && s[i] == '.') { i++; digits(s, n, &i); }
  } else if (i < n && s[i] == '.') {
    i++;
    if (digits(s, n, &i) == 0) return 0;
  } else {
    return 0;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '-' || s[i] == '+')) i++;
    if (digits(s, n, &i) == 0) return 0;
  }
  return i == n;
}

/* -?(0|[1-9][0-9]{0,14}) or the same with .[0-9]+ : numbers JSON writes as YAML does, exactly. */
static int plain_number(const unsigned char* s, size_t n) {
  size_t i = 0;
  if (i < n && s[i] == '-') i++;
  size_t start = i;
  if (i < n && s[i] == '0') i++;
  else { if (i == n || s[i] < '1' || s[i] > '9') return 0; while (i < n && is_dec(s[i])) i++; }
  if (i - start > 15) return 0;
  if (i == n) return 1;
  if (s[i] != '.') return 0;
  size_t frac = ++i;
  while (i < n && is_dec(s[i])) i++;
  return i > frac && i == n && (i - start) <= 16;
}

/* What a plain scalar is under js-yaml's core schema, or K_OTHER for a number this side does not write. */
static int plain_kind(const unsigned char* s, size_t n) {
  if (n == 0 || eq(s, n, "~") || eq(s, n, "null") || eq(s, n, "Null") || eq(s, n, "NULL")) return K_NULL;
  if (eq(s, n, "true") || eq(s, n, "True") || eq(s, n, "TRUE")) return K_TRUE;
  if (eq(s, n, "false") || eq(s, n, "False") || eq(s, n, "FALSE")) return K_FALSE;
  if (js_int(s, n) || js_float(s, n)) return plain_number(s, n) ? K_NUMBER : K_OTHER;
  return K_STRING;
}

/*
 * Is a key's text what js-yaml makes of it (String() of what it resolved
 * to)? A string, or an integer JSON writes as it stands, but -0 (String()
 * writes 0); not null, a boolean or a fraction.
 */
static int key_is_its_text(int kind, const unsigned char* v, size_t len) {
  if (kind == K_STRING) return 1;
  if (kind != K_NUMBER || memchr(v, '.', len) != NULL) return 0;
  return !(len == 2 && v[0] == '-' && v[1] == '0');
}

static uint64_t key_hash(uint64_t mapping, const unsigned char* s, size_t n) {
  uint64_t h = 1469598103934665603ULL ^ (mapping * 0x9e3779b97f4a7c15ULL);
  for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ULL; }
  return h;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/*
 * Characters the two YAML versions, or libyaml and js-yaml, read apart:
 * YAML 1.1 line breaks that YAML 1.2 reads as text (NEL C2 85, LS E2 80
 * A8, PS E2 80 A9); a byte order mark past the start (libyaml drops it,
 * js-yaml keeps it as text); a carriage return not followed by a line feed
 * (libyaml breaks the line there, js-yaml refuses some such documents); a
 * '#' right after a quote or a closing bracket (libyaml takes it for a
 * comment, YAML wants a space before one).
 */
static int has_unsafe_chars(const unsigned char* s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' && (i + 1 == n || s[i + 1] != '\n')) return 1;
    if (i + 1 < n && s[i] == 0xC2 && s[i + 1] == 0x85) return 1;
    if (i + 2 < n && s[i] == 0xE2 && s[i + 1] == 0x80 && (s[i + 2] == 0xA8 || s[i + 2] == 0xA9)) return 1;
    if (i > 0 && i + 2 < n && s[i] == 0xEF && s[i + 1] == 0xBB && s[i + 2] == 0xBF) return 1;
    /* A comment needs a space before it; libyaml also takes one right after a quote or a bracket. */
    if (i > 0 && s[i] == '#' && (s[i - 1] == '"' || s[i - 1] == '\'' || s[i - 1] == ']' || s[i - 1] == '}')) return 1;
  }
  return 0;
}

#define MAX_DEPTH 256

typedef struct {
  char mapping;       /* 1 mapping, 0 sequence */
  char flow;          /* written in brackets or braces */
  char want_key;      /* mapping: the next node is a key */
  size_t count;       /* entries written so far */
  uint64_t id;        /* mapping: its number, for key hashes */
} level_t;

/* The JSON text of `in`, or 0 (out->failed or a reason above) for "not here". */
static int convert(const unsigned char* in, size_t n, out_t* out) {
  if (has_unsafe_chars(in, n)) return 0;
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) return 0;
  yaml_parser_set_input_string(&p, in, n);
  level_t stack[MAX_DEPTH];
  int depth = 0, documents = 0, ok = 0, roots = 0;
  const int has_question = memchr(in, '?', n) != NULL;
  uint64_t mappings = 0;
  uint64_t* keys = NULL;
  size_t nkeys = 0, capkeys = 0;
  for (;;) {
    yaml_event_t e;
    if (!yaml_parser_parse(&p, &e)) break;
    int stop = 0, done = 0;
    switch (e.type) {
      case YAML_STREAM_START_EVENT:
      case YAML_DOCUMENT_END_EVENT:
        break;
      case YAML_STREAM_END_EVENT:
        done = 1;
        break;
      case YAML_DOCUMENT_START_EVENT:
        if (++documents > 1 || e.data.document_start.version_directive != NULL ||
            e.data.document_start.tag_directives.start != e.data.document_start.tag_directives.end) stop = 1;
        break;
      case YAML_ALIAS_EVENT:
        stop = 1;
        break;
      case YAML_SCALAR_EVENT:
      case YAML_SEQUENCE_START_EVENT:
      case YAML_MAPPING_START_EVENT: {
        const unsigned char* anchor = e.type == YAML_SCALAR_EVENT ? e.data.scalar.anchor : e.type == YAML_SEQUENCE_START_EVENT ? e.data.sequence_start.anchor : e.data.mapping_start.anchor;
        const unsigned char* tag = e.type == YAML_SCALAR_EVENT ? e.data.scalar.tag : e.type == YAML_SEQUENCE_START_EVENT ? e.data.sequence_start.tag : e.data.mapping_start.tag;
        if (anchor != NULL || tag != NULL) { stop = 1; break; }
        level_t* up = depth > 0 ? &stack[depth - 1] : NULL;
        if (up == NULL && roots++ > 0) { stop = 1; break; }
        int is_key = up != NULL && up->mapping && up->want_key;
        if (up != NULL && (!up->mapping || is_key) && up->count > 0) out_char(out, ',');
        if (e.type == YAML_SCALAR_EVENT) {
          /* Block scalars (| and >): libyaml and js-yaml read some of their edges apart (a '#' right after
             the indicator, a '#' line in the content); they are rare in a policy and go to js-yaml. */
          if (e.data.scalar.style == YAML_LITERAL_SCALAR_STYLE || e.data.scalar.style == YAML_FOLDED_SCALAR_STYLE) { stop = 1; break; }
          const unsigned char* v = e.data.scalar.value;
          size_t len = e.data.scalar.length;
          int plain = e.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
          /* A plain scalar over several lines: where it ends, the two read apart (a "- " below it, say). */
          if (plain && e.start_mark.line != e.end_mark.line) { stop = 1; break; }
          /* A plain scalar that starts like a document marker (an indented --- or ...): js-yaml reads it otherwise. */
          if (plain && len >= 3 && ((v[0] == '-' && v[1] == '-' && v[2] == '-') || (v[0] == '.' && v[1] == '.' && v[2] == '.'))) { stop = 1; break; }
          int kind = plain ? plain_kind(v, len) : K_STRING;
          if (is_key) {
            if (!key_is_its_text(kind, v, len)) { stop = 1; break; }
            if (nkeys == capkeys) {
              size_t cap = capkeys ? capkeys * 2 : 4096;
              uint64_t* k = realloc(keys, cap * sizeof *k);
              if (!k) { stop = 1; break; }
              keys = k;
              capkeys = cap;
            }
            keys[nkeys++] = key_hash(up->id, v, len);
            out_string(out, v, len);
            out_char(out, ':');
            up->want_key = 0;
            break;
          }
          switch (kind) {
            case K_STRING: out_string(out, v, len); break;
            case K_NULL: out_bytes(out, "null", 4); break;
            case K_TRUE: out_bytes(out, "true", 4); break;
            case K_FALSE: out_bytes(out, "false", 5); break;
            case K_NUMBER: out_bytes(out, (const char*)v, len); break;
            default: stop = 1;
          }
          if (stop) break;
        } else {
          if (is_key || depth == MAX_DEPTH) { stop = 1; break; }
          int mapping = e.type == YAML_MAPPING_START_EVENT;
          int flow = mapping ? e.data.mapping_start.style == YAML_FLOW_MAPPING_STYLE : e.data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE;
          if (flow && has_question) { stop = 1; break; }
          if (mapping && up != NULL && up->flow && (e.start_mark.index >= n || in[e.start_mark.index] != '{')) { stop = 1; break; }
          out_char(out, mapping ? '{' : '[');
          stack[depth].mapping = (char)mapping;
          stack[depth].flow = (char)flow;
          stack[depth].want_key = (char)mapping;
          stack[depth].count = 0;
          stack[depth].id = mapping ? ++mappings : 0;
          depth++;
          break;
        }
        /* A value written: the level it belongs to counts it, a mapping wants its next key. */
        if (up != NULL) { up->count++; if (up->mapping) up->want_key = 1; }
        break;
      }
      case YAML_SEQUENCE_END_EVENT:
      case YAML_MAPPING_END_EVENT: {
        depth--;
        out_char(out, e.type == YAML_MAPPING_END_EVENT ? '}' : ']');
        if (depth > 0) { stack[depth - 1].count++; if (stack[depth - 1].mapping) stack[depth - 1].want_key = 1; }
        break;
      }
      default:
        stop = 1;
    }
    yaml_event_delete(&e);
    if (stop || out->failed) break;
    if (done) { ok = roots == 1; break; }
  }
  yaml_parser_delete(&p);
  if (ok && nkeys > 1) {
    qsort(keys, nkeys, sizeof *keys, cmp_u64);
    for (size_t i = 1; i < nkeys; i++) if (keys[i] == keys[i - 1]) { ok = 0; break; }
  }
  free(keys);
  return ok && !out->failed;
}

napi_value yaml_to_json(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, result;
  napi_get_cb_info(env, info, &argc, &arg, NULL, NULL);
  size_t n = 0;
  if (argc < 1 || napi_get_value_string_utf8(env, arg, NULL, 0, &n) != napi_ok) {
    napi_throw_type_error(env, "EYAMLARG", "yamlToJson: expected a string");
    return NULL;
  }
  char* text = malloc(n + 1);
  if (!text) { napi_get_null(env, &result); return result; }
  napi_get_value_string_utf8(env, arg, text, n + 1, &n);
  out_t out = {0};
  int ok = convert((const unsigned char*)text, n, &out);
  free(text);
  if (ok) {
    if (napi_create_string_utf8(env, out.data, out.len, &result) != napi_ok) napi_get_null(env, &result);
  } else {
    napi_get_null(env, &result);
  }
  free(out.data);
  return result;
}
