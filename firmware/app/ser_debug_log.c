/* TFLM's platform log hooks (tensorflow/lite/micro/debug_log.h), with a small formatter of our own
 * instead of newlib's vsnprintf: the board only keeps TFLM's last log line for an error frame, and
 * newlib's printf machinery would cost ~3 KB of flash. Being defined here, these keep the linker
 * from pulling TFLM's cortex_m_generic/debug_log.cc out of the library.
 *
 * Understood: %d %i %u %x %X %c %s %p %% with l/ll/z/h size prefixes, a width and the '-'/'0' flags;
 * %f %e %g print the value with 3 decimals. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*ser_log_callback)(const char *line);
static ser_log_callback log_callback;

void RegisterDebugLogCallback(void (*cb)(const char *s)) { log_callback = cb; }

typedef struct {
  char *buf;
  size_t size, len; /* len counts every character, also those that did not fit */
} sink;

static void put(sink *s, char c) {
  if (s->len + 1 < s->size) s->buf[s->len] = c;
  s->len++;
}

/* Digits of v in base 10 or 16, padded to width with pad; negative puts a minus sign first. */
static void put_number(sink *s, uint64_t v, unsigned base, int upper, int negative, int width, char pad, int left) {
  char digits[24];
  int n = 0;
  do {
    const unsigned d = (unsigned)(v % base);
    digits[n++] = (char)(d < 10 ? '0' + d : (upper ? 'A' : 'a') + d - 10);
    v /= base;
  } while (v != 0);
  int total = n + (negative ? 1 : 0);
  if (negative && pad == '0') put(s, '-');
  for (; !left && total < width; total++) put(s, pad);
  if (negative && pad != '0') put(s, '-');
  while (n > 0) put(s, digits[--n]);
  for (; left && total < width; total++) put(s, ' ');
}

static void put_float(sink *s, double v) {
  if (v != v) {
    put(s, 'n'), put(s, 'a'), put(s, 'n');
    return;
  }
  const int negative = v < 0;
  if (negative) v = -v;
  if (v > 1e18) v = 1e18;
  uint64_t whole = (uint64_t)v;
  uint64_t frac = (uint64_t)((v - (double)whole) * 1000.0 + 0.5);
  if (frac >= 1000) whole++, frac -= 1000;
  put_number(s, whole, 10, 0, negative, 0, ' ', 0);
  put(s, '.');
  put_number(s, frac, 10, 0, 0, 3, '0', 0);
}

int DebugVsnprintf(char *buffer, size_t buf_size, const char *format, va_list args) {
  sink s = {buffer, buf_size, 0};
  for (const char *f = format; *f != '\0'; f++) {
    if (*f != '%') {
      put(&s, *f);
      continue;
    }
    f++;
    int left = 0, width = 0, longs = 0;
    char pad = ' ';
    for (; *f == '-' || *f == '0'; f++) {
      if (*f == '-') left = 1;
      else pad = '0';
    }
    for (; *f >= '0' && *f <= '9'; f++) width = width * 10 + (*f - '0');
    for (; *f == 'l' || *f == 'z' || *f == 'h'; f++) longs += (*f == 'l') ? 1 : (*f == 'z' ? (sizeof(size_t) > 4) : 0);
    if (left) pad = ' ';
    switch (*f) {
      case 'd':
      case 'i': {
        const int64_t v = longs >= 2 ? va_arg(args, long long) : (longs == 1 ? va_arg(args, long) : va_arg(args, int));
        put_number(&s, v < 0 ? 0u - (uint64_t)v : (uint64_t)v, 10, 0, v < 0, width, pad, left);
        break;
      }
      case 'u':
      case 'x':
      case 'X': {
        const uint64_t v = longs >= 2 ? va_arg(args, unsigned long long)
                                      : (longs == 1 ? va_arg(args, unsigned long) : va_arg(args, unsigned));
        put_number(&s, v, *f == 'u' ? 10 : 16, *f == 'X', 0, width, pad, left);
        break;
      }
      case 'p':
        put(&s, '0'), put(&s, 'x');
        put_number(&s, (uintptr_t)va_arg(args, void *), 16, 0, 0, 0, ' ', 0);
        break;
      case 'c':
        put(&s, (char)va_arg(args, int));
        break;
      case 's': {
        const char *str = va_arg(args, const char *);
        for (str = str ? str : "(null)"; *str != '\0'; str++) put(&s, *str);
        break;
      }
      case 'f':
      case 'e':
      case 'g':
        put_float(&s, va_arg(args, double));
        break;
      case '%':
        put(&s, '%');
        break;
      case '\0':
        f--; /* a lone '%' at the end */
        break;
      default:
        put(&s, '%'), put(&s, *f);
        break;
    }
  }
  if (buf_size > 0) buffer[s.len < buf_size ? s.len : buf_size - 1] = '\0';
  return (int)s.len;
}

void DebugLog(const char *format, va_list args) {
  char line[128];
  DebugVsnprintf(line, sizeof line, format, args);
  if (log_callback != NULL) log_callback(line);
}
