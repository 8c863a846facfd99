/*
 * The policy loader's checks of a document's text before a parser sees it
 * (src/policy/load.ts), in C: the JavaScript scans took 12-18 ms and 28-33
 * ms on the first 10,000-rule JSON document a process loads. This only
 * says "nothing here" or which check has something to say; the loader then
 * runs its own scan, which says what and where (in the columns JavaScript
 * counts) and has the last word. The text is read as UTF-8 (what napi
 * gives); the characters the scans look at are ASCII.
 *
 * policyTextScan(text, maxNesting, asJson) -> 0 | 1 | 2 | 3, one pass each:
 *   1   textProblem in load.ts may find something past its size check: a
 *       line indented (spaces and '- ') more than maxNesting * 4 columns, or
 *       brackets nesting deeper than maxNesting outside quotes and comments,
 *       read exactly as that function reads them (a quote opens after a
 *       space, [ { , or :, a comment after a space; the character before is
 *       decoded from UTF-8 where it is not ASCII, since a few spaces are not);
 *   and for JSON (asJson), the check the quick way makes before JSON.parse,
 *   which lets the last of two equal keys win where the loader must report
 *   the repetition:
 *   2   an object repeats a key, or brackets nest deeper than maxNesting as
 *       JSON reads them (the loader goes the located way, which says where);
 *   3   a key is written with an escape (\u0061 and a are the same key):
 *       the JavaScript scan decides;
 *   0   none of these.
 *   A key is hashed (FNV-1a, 64 bits) into a list that holds the keys of
 *   the objects still open; when an object closes its keys are compared
 *   (pairwise up to 16, sorted beyond) and dropped. Two different keys with
 *   the same hash read as a repetition: the located way then finds none, so
 *   a collision costs time, never a wrong answer. The text need not be
 *   valid JSON: whatever this makes of broken text, JSON.parse refuses next.
 *   The string is copied as UTF-8 once (napi offers no view of it): on this
 *   project's VMs that copy's fresh pages are most of the 19 ms its first
 *   call takes on a 2 MB document (4.5 ms after).
 */
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS 1024

typedef struct {
  uint64_t* keys;
  size_t n, cap;
} keys_t;

static int keys_add(keys_t* k, uint64_t h) {
  if (k->n == k->cap) {
    size_t cap = k->cap ? k->cap * 2 : 4096;
    uint64_t* d = realloc(k->keys, cap * sizeof *d);
    if (!d) return 0;
    k->keys = d;
    k->cap = cap;
  }
  k->keys[k->n++] = h;
  return 1;
}

static int cmp_hash(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/* Do the keys [from, to) of one object hold two equal hashes? Sorts that range in place. */
static int repeats(uint64_t* k, size_t from, size_t to) {
  size_t n = to - from;
  if (n < 2) return 0;
  if (n <= 16) {
    for (size_t i = from; i < to; i++)
      for (size_t j = i + 1; j < to; j++) if (k[i] == k[j]) return 1;
    return 0;
  }
  qsort(k + from, n, sizeof *k, cmp_hash);
  for (size_t i = from + 1; i < to; i++) if (k[i] == k[i - 1]) return 1;
  return 0;
}

/* 0, 2 (repeated, too deep, out of memory) or 3 (a key with an escape), as policyTextScan says. */
static int json_keys(const unsigned char* s, size_t n, int max_depth) {
  /* Per open bracket: where its keys start in the list, or (size_t)-1 for an array. */
  size_t first_key[MAX_LEVELS];
  int depth = 0, want_key = 0, answer = 0;
  keys_t keys = {0};
  if (max_depth > MAX_LEVELS) max_depth = MAX_LEVELS;
  for (size_t i = 0; i < n && answer == 0; i++) {
    unsigned char c = s[i];
    if (c == '"') {
      size_t j = i + 1;
      int escaped = 0;
      while (j < n && s[j] != '"') {
        if (s[j] == '\\') { escaped = 1; j++; }
        j++;
      }
      if (want_key && depth > 0 && first_key[depth - 1] != (size_t)-1) {
        if (escaped) { answer = 3; break; }
        uint64_t h = 1469598103934665603ULL;
        for (size_t k = i + 1; k < j && k < n; k++) { h ^= s[k]; h *= 1099511628211ULL; }
        if (!keys_add(&keys, h)) { answer = 2; break; }
        want_key = 0;
      }
      i = j;
    } else if (c == '{' || c == '[') {
      if (depth >= max_depth) { answer = 2; break; }
      first_key[depth++] = c == '{' ? keys.n : (size_t)-1;
      want_key = c == '{';
    } else if (c == '}' || c == ']') {
      if (depth > 0) {
        size_t from = first_key[--depth];
        if (from != (size_t)-1) {
          if (repeats(keys.keys, from, keys.n)) answer = 2;
          keys.n = from;
        }
      }
      want_key = 0;
    } else if (c == ',') {
      want_key = depth > 0 && first_key[depth - 1] != (size_t)-1;
    }
  }
  /* Objects left open (broken text): JSON.parse refuses it, but say what was seen. */
  while (answer == 0 && depth > 0) {
    size_t from = first_key[--depth];
    if (from != (size_t)-1 && repeats(keys.keys, from, keys.n)) answer = 2;
    if (from != (size_t)-1) keys.n = from;
  }
  free(keys.keys);
  return answer;
}

/* The text as UTF-8 (malloc'd, the caller frees), or NULL with a type error thrown or out of memory (*n = 0). */
static char* text_arg(napi_env env, napi_value v, size_t* n) {
  *n = 0;
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char* text = malloc(len + 1);
  if (text) napi_get_value_string_utf8(env, v, text, len + 1, n);
  return text;
}

/* What the loader's isSpace says of a character (what /\s/ matches). */
static int is_space_cp(uint32_t ch) {
  if (ch == 32 || (ch >= 9 && ch <= 13)) return 1;
  if (ch < 0xa0) return 0;
  return ch == 0xa0 || ch == 0x1680 || (ch >= 0x2000 && ch <= 0x200a) || ch == 0x2028 || ch == 0x2029 ||
         ch == 0x202f || ch == 0x205f || ch == 0x3000 || ch == 0xfeff;
}

/* The character that ends just before byte i (decoded from UTF-8; past U+FFFF none of the tests above match). */
static uint32_t char_before(const unsigned char* s, size_t i) {
  unsigned char b = s[i - 1];
  if (b < 0x80) return b;
  size_t start = i - 1;
  while (start > 0 && i - start < 4 && (s[start] & 0xc0) == 0x80) start--;
  unsigned char lead = s[start];
  if ((lead & 0xe0) == 0xc0 && i - start == 2) return ((uint32_t)(lead & 0x1f) << 6) | (s[start + 1] & 0x3f);
  if ((lead & 0xf0) == 0xe0 && i - start == 3) return ((uint32_t)(lead & 0x0f) << 12) | ((uint32_t)(s[start + 1] & 0x3f) << 6) | (s[start + 2] & 0x3f);
  return 0x10000;
}

static int opens_quote(uint32_t ch) {
  return is_space_cp(ch) || ch == '[' || ch == '{' || ch == ',' || ch == ':';
}

/* 1 when textProblem's loop would return nothing. */
static int text_clean(const unsigned char* s, size_t n, int max_nesting) {
  int depth = 0;
  unsigned char quote = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = s[i];
    if (ch == '\n') {
      size_t j = i + 1;
      while (j < n && (s[j] == ' ' || s[j] == '-')) j++;
      if (j - (i + 1) > (size_t)max_nesting * 4) return 0;
      continue;
    }
    if (quote) {
      if ((ch == '"' && quote == '"' && s[i - 1] != '\\') || (ch == '\'' && quote == '\'')) quote = 0;
      continue;
    }
    if ((ch == '"' || ch == '\'') && (i == 0 || opens_quote(char_before(s, i)))) quote = ch;
    else if (ch == '#' && (i == 0 || is_space_cp(char_before(s, i)))) { while (i + 1 < n && s[i + 1] != '\n') i++; }
    else if (ch == '[' || ch == '{') { if (++depth > max_nesting) return 0; }
    else if (ch == ']' || ch == '}') depth--;
  }
  return 1;
}

napi_value policy_text_scan(napi_env env, napi_callback_info info) {
  size_t argc = 3, n = 0;
  napi_value args[3], result;
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  int32_t max_nesting = 0;
  bool as_json = false;
  napi_valuetype type = napi_undefined;
  if (argc < 3 || napi_typeof(env, args[0], &type) != napi_ok || type != napi_string ||
      napi_get_value_int32(env, args[1], &max_nesting) != napi_ok || max_nesting < 1 ||
      napi_get_value_bool(env, args[2], &as_json) != napi_ok) {
    napi_throw_type_error(env, "ETEXTARG", "policyTextScan: expected a string, a nesting of at least 1 and a boolean");
    return NULL;
  }
  char* text = text_arg(env, args[0], &n);
  int answer = 1;
  if (text != NULL) {
    answer = text_clean((const unsigned char*)text, n, max_nesting) ? 0 : 1;
    if (answer == 0 && as_json) answer = json_keys((const unsigned char*)text, n, max_nesting);
  }
  free(text);
  napi_create_int32(env, answer, &result);
  return result;
}
