/* The `b24 inbox` command: the durable inbox's file looked at and repaired from the shell. */
#ifndef B24_INBOX_CMD_H
#define B24_INBOX_CMD_H

/* b24 inbox stats|list|retry|purge: the exit status. */
int b24_cmd_inbox(int argc, char **argv);

#endif
