/*
 * Test scaffolding, not part of pipeserve: an independent Win32 client of
 * examples/echo_server, written against the plain Win32 API (CreateFile,
 * ReadFile, WriteFile) as a C program on Windows would be.
 *
 * usage: win32_echo_client PIPE len|message THREADS ROUNDS SIZE...
 *        win32_echo_client PIPE oversize SIZE
 *        win32_echo_client PIPE loop THREADS STOPFILE
 *
 * Echo mode: THREADS threads each connect once (retrying ERROR_PIPE_BUSY,
 * which it counts), then send every SIZE ROUNDS times and check each reply
 * byte for byte. Prints "replies=R mismatches=M busy=B errors=E" and exits 0
 * only if every reply was right.
 *
 * Oversize mode: sends one message of SIZE bytes on a message-mode pipe and
 * expects the server to close the connection without a reply. Prints
 * "closed" and exits 0 if it did.
 *
 * Loop mode (length-prefixed): THREADS threads each loop connect -> one
 * request -> its reply -> close until the file STOPFILE exists (for at most
 * 120 s, so that a failed run leaves nothing behind), as clients
 * of a server being upgraded (--upgradable, --takeover) do. CreateFile
 * failing with ERROR_FILE_NOT_FOUND counts "not_found", ERROR_PIPE_BUSY
 * "busy" (retried after 1 ms, as a client waiting for an instance does);
 * the request's write failing with ERROR_NO_DATA (the instance was closed
 * as it connected: nothing reached a server) "closed_unread"; any other
 * failure "failed". Prints "sent=S answered=A not_found=N busy=B
 * closed_unread=C failed=F" and exits 0 only if every request sent was
 * answered rightly and nothing was not found, closed unread or failed.
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *g_pipe;
static int g_message;
static int g_rounds;
static int g_nsizes;
static long g_sizes[64];
static volatile LONG g_replies, g_mismatches, g_busy, g_errors;

static HANDLE connect_pipe(void)
{
    for (int attempt = 0; attempt < 2000; attempt++) {
        HANDLE h = CreateFileA(g_pipe, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
        if (h != INVALID_HANDLE_VALUE) {
            if (g_message) {
                DWORD mode = PIPE_READMODE_MESSAGE;
                if (!SetNamedPipeHandleState(h, &mode, NULL, NULL)) {
                    fprintf(stderr, "SetNamedPipeHandleState: %lu\n", GetLastError());
                    CloseHandle(h);
                    return INVALID_HANDLE_VALUE;
                }
            }
            return h;
        }
        DWORD err = GetLastError();
        if (err == ERROR_PIPE_BUSY)
            InterlockedIncrement(&g_busy);
        else if (err != ERROR_FILE_NOT_FOUND) {
            fprintf(stderr, "CreateFile: %lu\n", err);
            return INVALID_HANDLE_VALUE;
        }
        Sleep(5);
    }
    fprintf(stderr, "CreateFile: gave up\n");
    return INVALID_HANDLE_VALUE;
}

static int write_all(HANDLE h, const char *buf, DWORD len)
{
    DWORD done = 0;
    while (done < len || len == 0) {
        DWORD n = 0;
        if (!WriteFile(h, buf + done, len - done, &n, NULL))
            return 0;
        done += n;
        if (len == 0)
            break;
    }
    return 1;
}

static int read_exact(HANDLE h, char *buf, DWORD len)
{
    DWORD done = 0;
    while (done < len) {
        DWORD n = 0;
        if (!ReadFile(h, buf + done, len - done, &n, NULL) && GetLastError() != ERROR_MORE_DATA)
            return 0;
        if (n == 0)
            return 0;
        done += n;
    }
    return 1;
}

/* Reads one whole message, growing the buffer on ERROR_MORE_DATA. */
static long read_message(HANDLE h, char **buf, long *cap)
{
    long got = 0;
    for (;;) {
        DWORD n = 0;
        BOOL ok = ReadFile(h, *buf + got, (DWORD)(*cap - got), &n, NULL);
        got += n;
        if (ok)
            return got;
        if (GetLastError() != ERROR_MORE_DATA)
            return -1;
        *cap *= 2;
        *buf = realloc(*buf, *cap);
    }
}

static void fill(char *buf, long len, long seed)
{
    for (long i = 0; i < len; i++)
        buf[i] = (char)((seed * 31 + i) % 251);
}

static DWORD WINAPI worker(LPVOID arg)
{
    long id = (long)(INT_PTR)arg;
    HANDLE h = connect_pipe();
    if (h == INVALID_HANDLE_VALUE) {
        InterlockedIncrement(&g_errors);
        return 1;
    }
    long cap = 1 << 16;
    char *reply = malloc(cap);
    for (int r = 0; r < g_rounds; r++) {
        for (int s = 0; s < g_nsizes; s++) {
            long len = g_sizes[s];
            char *req = malloc(len + 4);
            fill(req + 4, len, id * 1000 + r * 10 + s);
            int ok;
            long got;
            if (g_message) {
                ok = write_all(h, req + 4, (DWORD)len);
                got = ok ? read_message(h, &reply, &cap) : -1;
            } else {
                req[0] = (char)(len >> 24); req[1] = (char)(len >> 16);
                req[2] = (char)(len >> 8); req[3] = (char)len;
                ok = write_all(h, req, (DWORD)(len + 4));
                unsigned char hdr[4];
                got = -1;
                if (ok && read_exact(h, (char *)hdr, 4)) {
                    got = ((long)hdr[0] << 24) | ((long)hdr[1] << 16) | ((long)hdr[2] << 8) | hdr[3];
                    if (got > cap) { cap = got; reply = realloc(reply, cap); }
                    if (got > 0 && !read_exact(h, reply, (DWORD)got))
                        got = -1;
                }
            }
            if (got < 0) {
                fprintf(stderr, "thread %ld: i/o failed on a %ld-byte frame: %lu\n", id, len, GetLastError());
                InterlockedIncrement(&g_errors);
                free(req);
                goto done;
            }
            if (got != len || memcmp(reply, req + 4, len) != 0) {
                fprintf(stderr, "thread %ld: reply of %ld bytes for a %ld-byte frame differs\n", id, got, len);
                InterlockedIncrement(&g_mismatches);
            } else {
                InterlockedIncrement(&g_replies);
            }
            free(req);
        }
    }
done:
    free(reply);
    CloseHandle(h);
    return 0;
}

static const char *g_stopfile;
static volatile LONG g_sent, g_not_found, g_closed_unread;

static DWORD WINAPI looper(LPVOID arg)
{
    long id = (long)(INT_PTR)arg;
    char req[64], reply[64];
    ULONGLONG give_up = GetTickCount64() + 120000;
    for (long n = 1; GetFileAttributesA(g_stopfile) == INVALID_FILE_ATTRIBUTES && GetTickCount64() < give_up; n++) {
        HANDLE h = CreateFileA(g_pipe, GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
        if (h == INVALID_HANDLE_VALUE) {
            DWORD err = GetLastError();
            if (err == ERROR_PIPE_BUSY) {
                InterlockedIncrement(&g_busy);
            } else if (err == ERROR_FILE_NOT_FOUND) {
                fprintf(stderr, "thread %ld: not found\n", id);
                InterlockedIncrement(&g_not_found);
            } else {
                fprintf(stderr, "thread %ld: CreateFile: %lu\n", id, err);
                InterlockedIncrement(&g_errors);
            }
            Sleep(1);
            continue;
        }
        int len = sprintf(req + 4, "client %ld request %ld", id, n);
        req[0] = req[1] = 0; req[2] = (char)(len >> 8); req[3] = (char)len;
        if (!write_all(h, req, (DWORD)(len + 4))) {
            DWORD err = GetLastError();
            if (err == ERROR_NO_DATA) {
                InterlockedIncrement(&g_closed_unread);
            } else {
                InterlockedIncrement(&g_sent);
                InterlockedIncrement(&g_errors);
            }
            fprintf(stderr, "thread %ld: writing request %ld: %lu\n", id, n, err);
            CloseHandle(h);
            continue;
        }
        InterlockedIncrement(&g_sent);
        unsigned char hdr[4];
        if (!read_exact(h, (char *)hdr, 4) || hdr[0] || hdr[1] || ((hdr[2] << 8) | hdr[3]) != len
            || !read_exact(h, reply, (DWORD)len)) {
            fprintf(stderr, "thread %ld: request %ld not answered: %lu\n", id, n, GetLastError());
            InterlockedIncrement(&g_errors);
        } else if (memcmp(reply, req + 4, len) != 0) {
            InterlockedIncrement(&g_mismatches);
        } else {
            InterlockedIncrement(&g_replies);
        }
        CloseHandle(h);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[2], "loop") == 0) {
        g_pipe = argv[1];
        g_stopfile = argv[4];
        int threads = atoi(argv[3]);
        if (threads < 1 || threads > 64) {
            fprintf(stderr, "loop: THREADS must be 1..64\n");
            return 2;
        }
        HANDLE th[64];
        for (int t = 0; t < threads; t++) {
            th[t] = CreateThread(NULL, 0, looper, (LPVOID)(INT_PTR)t, 0, NULL);
            if (!th[t]) {
                fprintf(stderr, "CreateThread: %lu\n", GetLastError());
                return 1;
            }
        }
        WaitForMultipleObjects(threads, th, TRUE, INFINITE);
        printf("sent=%ld answered=%ld not_found=%ld busy=%ld closed_unread=%ld failed=%ld\n", g_sent,
               g_replies, g_not_found, g_busy, g_closed_unread, g_errors + g_mismatches);
        return (g_sent > 0 && g_sent == g_replies && g_not_found == 0 && g_closed_unread == 0
                && g_errors == 0 && g_mismatches == 0) ? 0 : 1;
    }
    if (argc >= 4 && strcmp(argv[2], "oversize") == 0) {
        g_pipe = argv[1];
        g_message = 1;
        long len = atol(argv[3]);
        HANDLE h = connect_pipe();
        if (h == INVALID_HANDLE_VALUE)
            return 1;
        char *req = malloc(len);
        fill(req, len, 7);
        if (!write_all(h, req, (DWORD)len)) {
            fprintf(stderr, "write failed: %lu\n", GetLastError());
            return 1;
        }
        long cap = 1 << 16;
        char *reply = malloc(cap);
        long got = read_message(h, &reply, &cap);
        if (got >= 0) {
            fprintf(stderr, "expected the server to close, got a %ld-byte reply\n", got);
            return 1;
        }
        printf("closed (error %lu)\n", GetLastError());
        return 0;
    }
    if (argc < 6) {
        fprintf(stderr, "usage: %s PIPE len|message THREADS ROUNDS SIZE...\n       %s PIPE oversize SIZE\n       %s PIPE loop THREADS STOPFILE\n", argv[0], argv[0], argv[0]);
        return 2;
    }
    g_pipe = argv[1];
    g_message = strcmp(argv[2], "message") == 0;
    int threads = atoi(argv[3]);
    g_rounds = atoi(argv[4]);
    for (int i = 5; i < argc && g_nsizes < 64; i++)
        g_sizes[g_nsizes++] = atol(argv[i]);

    HANDLE th[64];
    for (int t = 0; t < threads && t < 64; t++)
        th[t] = CreateThread(NULL, 0, worker, (LPVOID)(INT_PTR)t, 0, NULL);
    WaitForMultipleObjects(threads, th, TRUE, INFINITE);
    printf("replies=%ld mismatches=%ld busy=%ld errors=%ld\n", g_replies, g_mismatches, g_busy, g_errors);
    long expected = (long)threads * g_rounds * g_nsizes;
    return (g_mismatches == 0 && g_errors == 0 && g_replies == expected) ? 0 : 1;
}
