/* safetensors: small helpers (UTF-8 validation, error strings, paths, reading and writing whole
 * files), also used by the checkpoint quantizer. */
#include "io/safetensors_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* small helpers */

int64_t mxm_st_utf8_invalid_at(const uint8_t *s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c == 0xE0) { /* no overlongs */
            len = 3;
            lo = 0xA0;
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            len = 3;
        } else if (c == 0xED) { /* no surrogates U+D800..U+DFFF */
            len = 3;
            hi = 0x9F;
        } else if (c == 0xF0) { /* no overlongs */
            len = 4;
            lo = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
            len = 4;
        } else if (c == 0xF4) { /* nothing above U+10FFFF */
            len = 4;
            hi = 0x8F;
        } else { /* continuation byte, overlong lead C0/C1, or F5..FF */
            return i;
        }
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i + 1;
        for (int k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i + k;
        i += len;
    }
    return -1;
}

const char *st_strerror(int e, char *buf, size_t n) {
    if (strerror_r(e, buf, n) != 0) snprintf(buf, n, "errno %d", e);
    return buf;
}

char *mxm_st_path_join(const char *dir, const char *name) {
    const size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

int st_is_regular(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

const char *st_skip_dot(const char *s) {
    while (s[0] == '.' && s[1] == '/')
        s += 2;
    return s;
}

mxm_status st_write_all(int fd, const void *p, int64_t n, const char *path) {
    const uint8_t *q = p;
    while (n > 0) {
        const size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
        const ssize_t r = write(fd, q, chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            char eb[128];
            return mxm_fail(MXM_ERR_IO, PT ": write failed: %s", path,
                            r < 0 ? st_strerror(errno, eb, sizeof eb) : "no progress");
        }
        q += r;
        n -= r;
    }
    return MXM_OK;
}

mxm_status mxm_st_read_small_file(const char *path, int64_t max_bytes, uint8_t **out,
                                  int64_t *out_len) {
    char eb[128];
    *out = NULL;
    *out_len = 0;
    const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        const int e = errno;
        return mxm_fail(e == ENOENT ? MXM_ERR_NOT_FOUND : MXM_ERR_IO, PT ": cannot open: %s", path,
                        st_strerror(e, eb, sizeof eb));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mxm_fail(MXM_ERR_IO, PT ": not a readable regular file", path);
    }
    if (sb.st_size > max_bytes) {
        close(fd);
        return mxm_fail(MXM_ERR_FORMAT, PT ": %lld bytes is over the %lld-byte limit", path,
                        (long long)sb.st_size, (long long)max_bytes);
    }
    const size_t len = (size_t)sb.st_size;
    uint8_t *buf = malloc(len + 1);
    if (!buf) {
        close(fd);
        return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", path);
    }
    size_t got = 0;
    while (got < len) {
        const ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            const int e = r < 0 ? errno : 0;
            close(fd);
            free(buf);
            return mxm_fail(MXM_ERR_IO, PT ": read failed: %s", path,
                            r < 0 ? st_strerror(e, eb, sizeof eb) : "file shrank while reading");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    *out = buf;
    *out_len = (int64_t)len;
    return MXM_OK;
}
