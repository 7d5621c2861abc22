/*
 * Test scaffolding, not part of pipeserve.
 *
 * Rust's std (1.78+) imports ProcessPrng from bcryptprimitives.dll. Wine 8 ships no
 * such DLL, so every Rust .exe fails to load under it. This stand-in exports that one
 * function and fills the buffer from RtlGenRandom (advapi32's SystemFunction036).
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
