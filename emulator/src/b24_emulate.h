/* The `b24 emulate` command: a Bitrix24 portal in memory, served by b24 serve. */
#ifndef B24_EMULATE_H
#define B24_EMULATE_H

/* b24 emulate [SERVER OPTIONS] [EMULATOR OPTIONS]: the exit status. */
int b24_cmd_emulate(int argc, char **argv);

#endif
