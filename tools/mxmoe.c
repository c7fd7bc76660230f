/* mxmoe: the command-line tool. */
#include <stdio.h>
#include <string.h>

#include "mxmoe.h"

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    printf("mxmoe %s\n", mxm_version());
    return 0;
}
